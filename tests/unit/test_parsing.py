from clio_stream.llm.parsing import (
    parse_choice,
    parse_facet_answer,
    parse_int_in_range,
    parse_numbered_list,
    parse_summary_and_name,
    parse_tagged,
)


def test_facet_answer_joins_prefill_and_stops_at_tag():
    out = parse_facet_answer(" write a poem about autumn.</answer> trailing junk", "The task is to")
    assert out == "The task is to write a poem about autumn."


def test_facet_answer_without_closing_tag_ends_at_blank_line():
    out = parse_facet_answer(" fix a bug in a script\n\nSmolLM: something else", "The task is to")
    assert out == "The task is to fix a bug in a script"


def test_facet_answer_empty_is_missing():
    assert parse_facet_answer("   </answer>", "x") is None
    assert parse_facet_answer(None, "x") is None


def test_repetition_is_cut():
    text = "It is a plan. It is a plan. It is a plan."
    assert parse_tagged(text, "answer") == "It is a plan."


def test_too_long_answer_is_rejected():
    assert parse_tagged("word " * 200, "answer") is None


def test_int_in_range():
    assert parse_int_in_range("3</answer>", 1, 5) == 3
    assert parse_int_in_range(" Score: 4 out of 5", 1, 5) == 4
    assert parse_int_in_range("7", 1, 5) is None
    assert parse_int_in_range("none", 1, 5) is None
    assert parse_int_in_range("2.5", 1, 5) is None


def test_summary_and_name():
    text = "Users asked for recipes.</summary>\n<name>Cook simple vegetarian dinners</name>"
    assert parse_summary_and_name(text) == ("Users asked for recipes.", "Cook simple vegetarian dinners")
    assert parse_summary_and_name("Users asked.</summary>\nName: Cook dinners.") == ("Users asked.", "Cook dinners")
    assert parse_summary_and_name("only a summary") is None


def test_numbered_list_with_prefilled_first_item():
    text = " Writing help\n2. Coding and debugging\n3) Maths homework\n- Writing help\n</answer>"
    assert parse_numbered_list(text) == ["Writing help", "Coding and debugging", "Maths homework"]


def test_choice_by_number_or_name():
    cands = ["Write code", "Plan travel", "Cook food"]
    assert parse_choice("2. Plan travel", cands) == 1
    assert parse_choice("Category 3", cands) == 2
    assert parse_choice("I think cook food fits", cands) == 2
    assert parse_choice("9", cands) is None
    assert parse_choice("nothing", cands) is None


def test_list_markers_and_long_summaries_are_trimmed():
    from clio_stream.llm.parsing import clean_text, first_sentences

    assert clean_text("- A friendly name") == "A friendly name"
    assert clean_text("2. Second") == "Second"
    assert first_sentences("One. Two! Three? Four.", 2) == "One. Two!"


def test_cluster_name_filter():
    from clio_stream.stages.naming import _parse_name

    assert _parse_name("Plan a wedding budget</name>", 0) == "Plan a wedding budget"
    assert _parse_name("Plan</name>", 0) is None  # one word
    assert _parse_name("Chatbots 🌟 #AI helpers</name>", 0) is None
    assert _parse_name("Email me at a@b.com</name>", 0) is None
