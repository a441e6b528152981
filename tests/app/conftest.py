from pathlib import Path

import pytest

from pipeline.ingestion.sample import write_sample_pdf


@pytest.fixture(scope="session")
def sample_pdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_pdf(tmp_path_factory.mktemp("sample") / "folio-guide.pdf")
