"""Shared test fixtures. Tests that read ../shared/data skip cleanly when it is absent."""

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The benchmark data folder beside the checkout (CI has it; a user's fresh clone may not)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The test models are tiny: they run fastest on one thread, and OpenMP threads spin
    against each other on a busy 2-core runner."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def saved_tiny(tmp_path_factory) -> Path:
    """A tiny random Llama and its character tokenizer saved as a Hugging Face folder."""
    from tiny import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny-model")
    tok = tiny_tokenizer()
    tiny_model(tok, seed=4).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
