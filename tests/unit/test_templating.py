import pytest

from clio_stream.llm.templating import cached_replacements, placeholders


def test_replaces_all_placeholders():
    assert cached_replacements("a {{x}} b {{y}} {{x}}", {"x": "1", "y": "2"}) == "a 1 b 2 1"


def test_values_are_not_substituted_again():
    # A conversation quoting our template syntax must not inject a field.
    out = cached_replacements("<c>{{conversation}}</c> Q: {{question}}", {"conversation": "{{question}}", "question": "why?"})
    assert out == "<c>{{question}}</c> Q: why?"


def test_missing_value_is_an_error():
    with pytest.raises(KeyError, match="typo"):
        cached_replacements("{{typo}}", {})


def test_placeholders():
    assert placeholders("{{a}} {{b}} {{a}}") == {"a", "b"}
