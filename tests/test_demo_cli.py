import json

import pytest

from selfcorrect.cli import main


def test_demo_quick_runs_the_whole_pipeline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SELFCORRECT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output", str(out), "--run.progress", "false"]) == 0
    printed = capsys.readouterr().out
    assert "| Base |" in printed and "| SCoRe |" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["base"]["n"] == results["score"]["n"] == 40
    for name in ("config.yaml", "metrics.jsonl", "results.md", "final/config.json"):
        assert (out / name).exists(), name
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["SCoRe", "base"]


def test_demo_runs_on_one_thread_and_gives_the_threads_back(monkeypatch):
    """The demo's numbers must not depend on the machine's core count (float sums split over
    threads round differently), so it pins one thread, and leaves the caller's setting as it was."""
    import torch

    from selfcorrect import demo

    seen = []
    monkeypatch.setattr(demo, "_run_demo", lambda cfg, quick: seen.append(torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        demo.run_demo(demo.demo_config(quick=True), quick=True)
        assert seen == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_demo_refuses_a_folder_holding_another_commands_run(tmp_path, capsys):
    out = tmp_path / "my-training-run"
    (out / "checkpoints" / "step-000002").mkdir(parents=True)
    (out / "metrics.jsonl").write_text("{}\n")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    # the demo's recipe sets run.overwrite: a run it did not make is refused anyway, before any write
    assert main(["demo", "--quick", "--output", str(out), "--run.progress", "false"]) == 2
    assert "the demo did not make" in capsys.readouterr().err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_demo_replaces_its_own_run_only_when_overwrite_is_on(tmp_path):
    from selfcorrect.demo import DEMO_MARKER, claim_demo_folder

    out = tmp_path / "demo"
    claim_demo_folder(out, overwrite=False)  # an empty folder: claimed
    assert (out / DEMO_MARKER).exists()
    (out / "eval" / "base").mkdir(parents=True)
    (out / "metrics.jsonl").write_text("{}\n")
    claim_demo_folder(out, overwrite=True)
    with pytest.raises(FileExistsError, match="already holds a demo run"):
        claim_demo_folder(out, overwrite=False)  # refused before the base evaluation is rewritten
    (out / DEMO_MARKER).unlink()
    (out / "results.md").write_text("a demo from before the marker\n")
    claim_demo_folder(out, overwrite=True)


def test_demo_help_shows_the_demos_own_defaults(capsys):
    assert main(["demo", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "[default: 'runs/demo']" in text and "[default: True]" in text
