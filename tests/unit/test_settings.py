import pytest

from clio_stream.settings import ClioSettings, OpenClioConfig
from clio_stream.settings_defaults import default_n_base_clusters


def test_defaults_follow_the_seed():
    s = ClioSettings()
    assert s.seed == 27 and s.web_port == 8421 and s.min_top_level_size == 5
    assert s.n_base_clusters(200) == 20 == default_n_base_clusters(200)
    assert OpenClioConfig is ClioSettings


def test_env_and_toml(monkeypatch, tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('seed = 5\nsite_chunk_size = 7\nllm_model = "from-toml"\n')
    monkeypatch.setenv("CLIO_CONFIG", str(toml))
    monkeypatch.setenv("CLIO_LLM_MODEL", "from-env")
    s = ClioSettings()
    assert s.seed == 5 and s.site_chunk_size == 7
    assert s.llm_model == "from-env"  # env beats the file
    assert ClioSettings(llm_model="kw").llm_model == "kw"  # keywords beat env


def test_callables_from_import_strings(monkeypatch):
    monkeypatch.setenv("CLIO_N_BASE_CLUSTERS", "math.isqrt")
    assert ClioSettings().n_base_clusters(100) == 10


def test_overrides_apply_on_top_of_a_settings_object():
    base = ClioSettings(seed=1, min_top_level_size=3)
    s = base.with_overrides(llmBatchSize=5, min_top_level_size=9)  # camelCase seed names accepted
    assert (s.seed, s.llm_batch_size, s.min_top_level_size) == (1, 5, 9)
    assert base.min_top_level_size == 3  # the original is untouched


def test_unknown_override_is_an_error():
    with pytest.raises(TypeError, match="no_such_knob"):
        ClioSettings().with_overrides(no_such_knob=1)


def test_validation():
    with pytest.raises(ValueError):
        ClioSettings(site_chunk_size=0)


def test_public_dict_has_no_secrets():
    d = ClioSettings(user_id_hash_key="s3cret").public_dict()
    assert "user_id_hash_key" not in d and "s3cret" not in str(d)


def test_to_env_round_trips_plain_settings(monkeypatch):
    s = ClioSettings(qdrant_grpc_port=7001, llm_sampling_args={"temperature": 0.1}, dedup=False,
                     user_id_hash_key="k", api_keys="admin:x")
    env = s.to_env()
    assert "CLIO_API_KEYS" not in env and "CLIO_DEDUP_KEY" not in env  # secrets for the API and callables stay out
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    back = ClioSettings()
    assert back.qdrant_grpc_port == 7001 and back.llm_sampling_args == {"temperature": 0.1}
    assert back.dedup is False and back.user_id_hash_key == "k"


def test_qdrant_shard_number_from_env_reaches_the_collection_layout(monkeypatch):
    from clio_stream.storage.qdrant import QdrantConnection

    assert QdrantConnection.options(ClioSettings())["layout"].shard_number == 1
    monkeypatch.setenv("CLIO_QDRANT_SHARD_NUMBER", "4")
    assert QdrantConnection.options(ClioSettings())["layout"].shard_number == 4
    with pytest.raises(ValueError):
        ClioSettings(qdrant_shard_number=0)
