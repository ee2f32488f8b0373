"""Provenance: what a rerun needs (commit, dirtiness incl. untracked sources, CPU model, threads, math libraries)."""

import subprocess

import torch

from bnlab.utils import provenance


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_untracked_source_file_makes_the_tree_dirty(tmp_path, monkeypatch):
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@t")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "a.yaml").write_text("a: 1\n")
    (tmp_path / ".gitignore").write_text("runs/\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "init")
    monkeypatch.setattr(provenance, "REPO_ROOT", tmp_path)
    assert provenance.git_info()["git_dirty"] is False
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "x.txt").write_text("ignored output")  # ignored: not dirty
    (tmp_path / "notes.txt").write_text("untracked outside the source folders")  # not a source: not dirty
    assert provenance.git_info()["git_dirty"] is False
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "t.csv").write_text("a\n1\n")
    _git(tmp_path, "add", "results")
    _git(tmp_path, "commit", "-qm", "results")
    (tmp_path / "results" / "t.csv").write_text("a\n2\n")  # an analysis rewriting committed results: not an input
    assert provenance.git_info()["git_dirty"] is False
    (tmp_path / "conf" / "a.yaml").write_text("a: 2\n")  # an edited config is
    assert provenance.git_info()["git_dirty"] is True
    _git(tmp_path, "checkout", "conf/a.yaml")
    (tmp_path / "conf" / "new.yaml").write_text("b: 2\n")  # a new, uncommitted config changes what runs compute
    assert provenance.git_info()["git_dirty"] is True


def test_environment_records_cpu_threads_and_math_libraries():
    env = provenance.environment("cpu")
    assert env["cpu_model"] and isinstance(env["cpu_model"], str)
    assert env["threads"] == torch.get_num_threads()
    assert "BLAS" in env["math_libraries"] or "CPU capability" in env["math_libraries"]


def test_environment_records_the_forced_cpu_capability(monkeypatch):
    """A rerun on another CPU is bitwise only at the recording's ATen capability: the env value is recorded."""
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert provenance.environment("cpu")["aten_cpu_capability"] == "avx2"
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    assert provenance.environment("cpu")["aten_cpu_capability"] is None
