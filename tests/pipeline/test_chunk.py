from pipeline.config import ChunkConfig
from pipeline.ingestion.chunk import BlockRef, chunk_blocks, count_tokens

CONFIG = ChunkConfig(target_tokens=20, max_tokens=40)


def _words(n: int, word: str = "word") -> str:
    return " ".join([word] * n)


def test_headings_start_chunks_and_travel_with_their_text() -> None:
    blocks = [
        BlockRef(1, 1, "heading", "Intro"),
        BlockRef(2, 1, "text", _words(8)),
        BlockRef(3, 1, "text", _words(8)),
        BlockRef(4, 1, "heading", "Method"),
        BlockRef(5, 1, "text", _words(5)),
    ]
    chunks = chunk_blocks(blocks, CONFIG)
    assert [c.block_ids for c in chunks] == [(1, 2, 3), (4, 5)]
    assert chunks[1].text.startswith("Method\n")


def test_chunks_never_cross_pages_and_respect_the_target() -> None:
    blocks = [BlockRef(i, 1 + i // 3, "text", _words(9)) for i in range(6)]
    chunks = chunk_blocks(blocks, CONFIG)
    assert all(c.page_start == c.page_end for c in chunks)
    assert [c.block_ids for c in chunks] == [(0, 1), (2,), (3, 4), (5,)]
    assert [c.ordinal for c in chunks] == [0, 1, 2, 3]


def test_figures_and_tables_are_their_own_chunks_with_captions() -> None:
    blocks = [
        BlockRef(1, 2, "text", "Before."),
        BlockRef(2, 2, "figure", "Figure 1: A plot.\naxis labels", reading_order=1),
        BlockRef(3, 2, "caption", "Figure 1: A plot.", caption_of=1, reading_order=2),
        BlockRef(4, 2, "text", "After.", reading_order=3),
    ]
    chunks = chunk_blocks(blocks, CONFIG)
    figure = next(c for c in chunks if c.kind == "figure")
    assert figure.block_ids == (2, 3) and figure.text.startswith("Figure 1: A plot.")
    # Prose interrupted by a figure continues in the same chunk.
    assert [c.block_ids for c in chunks if c.kind == "text"] == [(1, 4)]


def test_long_blocks_split_at_sentences() -> None:
    text = " ".join(f"Sentence number {i} has some words." for i in range(20))
    chunks = chunk_blocks([BlockRef(7, 1, "text", text)], CONFIG)
    assert len(chunks) > 2
    assert all(c.block_ids == (7,) for c in chunks)
    assert all(c.token_count <= 2 * CONFIG.target_tokens for c in chunks)
    assert " ".join(c.text for c in chunks) == text


def test_empty_input_and_token_count() -> None:
    assert chunk_blocks([], CONFIG) == []
    assert count_tokens("Hello, world!") == 4


def test_a_long_table_splits_into_chunks_that_repeat_caption_and_header() -> None:
    header = "| Model | Score |\n|---|---|"
    rows = [f"| model {i} | {i}.5 |" for i in range(30)]
    text = "\n".join(["Table 3: Scores.", header, *rows])
    blocks = [
        BlockRef(1, 4, "table", text, reading_order=0),
        BlockRef(2, 4, "caption", "Table 3: Scores.", caption_of=0, reading_order=1),
    ]
    chunks = chunk_blocks(blocks, CONFIG)
    assert len(chunks) > 2 and all(c.kind == "table" and c.block_ids == (1, 2) for c in chunks)
    for chunk in chunks:
        assert chunk.text.startswith(f"Table 3: Scores.\n{header}\n| model ")
    # Every row lands in exactly one chunk, in order.
    assert [line for c in chunks for line in c.text.splitlines()[3:]] == rows


def test_a_short_table_stays_one_chunk() -> None:
    text = "Table 1: Two rows.\n| a | b |\n|---|---|\n| 1 | 2 |"
    chunks = chunk_blocks([BlockRef(1, 1, "table", text)], CONFIG)
    assert [c.text for c in chunks] == [text]
