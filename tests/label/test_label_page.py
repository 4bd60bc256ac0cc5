"""`tlearn label` over HTTP (in-process): answer, skip, undo, new class, the table kept as train reads
it, the queue as a pure function of pool + table + cache, the background refit, two writers at
once, review mode, train leaving removed rows out, and bad input as one line and exit 2."""
from __future__ import annotations

import csv
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tlearn.data import read_table
from tlearn.label import AnswerTable, Backbone, LabelSession, ReviewSession, create_label_app

from conftest import TINY_MODEL, make_folder, run_cli

TINY = ("--model", TINY_MODEL, "--weights", "none")
CLASSES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("label") / "pool", per_class=6)


def session(pool: Path, table: Path, classes=CLASSES, refit_every: int = 4) -> LabelSession:
    backbone = Backbone(model=TINY_MODEL, weights="none", cache_dir=str(pool.parent / "cache"))
    return LabelSession(pool, table, backbone, classes, refit_every)


def rows(table: Path) -> list[dict]:
    with table.open(newline="") as handle:
        return list(csv.DictReader(handle))


def answer_next(client: TestClient, label: str | None = None) -> tuple[str, dict]:
    """Answer the page's next image with its true class (its folder) or `label`."""
    path = client.get("/api/state").json()["image"]["path"]
    response = client.post("/api/answer", json={"path": path, "label": path.split("/")[0] if label is None else label})
    assert response.status_code == 200, response.text
    return path, response.json()


def test_answer_skip_undo_and_a_new_class_write_the_table_at_once(pool, tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("path,label,split,note\ncat/0.png,cat,val,checked\n")  # columns of the user's own stay
    client = TestClient(create_label_app(session(pool, table)))
    first, _ = answer_next(client)
    skipped, _ = answer_next(client, "")
    assert rows(table) == [{"path": "cat/0.png", "label": "cat", "split": "val", "note": "checked"},
                           {"path": first, "label": first.split("/")[0], "split": "train", "note": ""},
                           {"path": skipped, "label": "", "split": "train", "note": ""}]
    undone = client.post("/api/undo").json()
    assert undone["undone"] == skipped and undone["image"]["path"] == skipped  # asked again
    assert [row["path"] for row in rows(table)] == ["cat/0.png", first]
    assert client.post("/api/answer", json={"path": skipped, "label": "owl"}).status_code == 422  # not a class yet
    assert client.post("/api/class", json={"name": "owl"}).json()["classes"] == CLASSES + ["owl"]
    assert client.post("/api/answer", json={"path": skipped, "label": "owl"}).status_code == 200
    assert rows(table)[-1] == {"path": skipped, "label": "owl", "split": "train", "note": ""}
    refused = client.post("/api/answer", json={"path": "../outside.png", "label": "cat"})
    assert refused.status_code == 422 and "not an image of the pool" in refused.json()["error"]
    assert client.get("/image/../labels.csv").status_code == 404
    assert client.get(f"/image/{first}").content == (pool / first).read_bytes()
    table_read = read_table(table)  # as train reads it
    assert [row.labels for row in table_read.rows] == [("cat",), (first.split("/")[0],), ("owl",)]


def test_the_queue_is_the_same_for_a_restarted_server_and_refits_in_the_background(pool, tmp_path):
    table = tmp_path / "labels.csv"
    client = TestClient(create_label_app(session(pool, table)))
    answered = [answer_next(client)[0] for _ in range(6)]
    deadline = time.monotonic() + 60
    while (state := client.get("/api/state").json())["refitting"] or state["estimate"] is None:
        assert time.monotonic() < deadline, state
        time.sleep(0.1)
    assert state["curve"] and 0 <= state["estimate"] <= 1
    assert state["image"]["guess"] in CLASSES and len(state["image"]["alternatives"]) == 3
    restarted = TestClient(create_label_app(session(pool, table)))  # a new process would read the same
    assert restarted.get("/api/state").json()["image"]["path"] == state["image"]["path"]
    assert state["image"]["path"] not in answered and state["answered"] == 6


def test_two_writers_at_once_lose_nothing(pool, tmp_path):
    table = tmp_path / "labels.csv"
    paths = sorted(p.relative_to(pool).as_posix() for p in pool.rglob("*.png"))
    script = ("import sys; from tlearn.label import AnswerTable\n"
              "table = AnswerTable(sys.argv[1])\n"
              "for path in sys.argv[2:]: table.set(path, {'label': path.split('/')[0]})\n")
    writers = [subprocess.Popen([sys.executable, "-c", script, str(table), *paths[start::2]]) for start in (0, 1)]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0]
    written = rows(table)
    assert sorted(row["path"] for row in written) == paths
    assert all(row["label"] == row["path"].split("/")[0] for row in written)


def test_two_servers_on_one_table_answering_at_once_lose_nothing(pool, tmp_path):
    import threading

    table = tmp_path / "labels.csv"
    clients = [TestClient(create_label_app(session(pool, table))) for _ in range(2)]
    paths = sorted(p.relative_to(pool).as_posix() for p in pool.rglob("*.png"))
    failures = []

    def answer_all(client: TestClient, mine: list[str]) -> None:
        for path in mine:
            response = client.post("/api/answer", json={"path": path, "label": path.split("/")[0]})
            if response.status_code != 200:
                failures.append(response.text)

    threads = [threading.Thread(target=answer_all, args=(client, paths[start::2]))
               for start, client in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not failures
    assert sorted(row["path"] for row in rows(table)) == paths
    assert clients[0].get("/api/state").json()["image"] is None  # every image answered: nothing left to ask


def test_review_keeps_relabels_and_removes_into_the_table_and_resumes(pool, tmp_path):
    audit = tmp_path / "audit"
    audit.mkdir()
    (audit / "label_issues.csv").write_text(f"path,given,suggested,score\n{pool}/cat/1.png,cat,dog,0.9\n"
                                            f"{pool}/dog/2.png,dog,fox,0.8\n{pool}/fox/3.png,fox,cat,0.7\n")
    (audit / "duplicates.csv").write_text("path_a,path_b,similarity,kind,cross_split\n"
                                          f"{pool}/cat/4.png,{pool}/cat/5.png,1.0000,exact,false\n")
    table = tmp_path / "labels.csv"
    table.write_text("path,label\ncat/1.png,cat\ndog/2.png,dog\nfox/3.png,fox\ncat/4.png,cat\ncat/5.png,cat\n")
    client = TestClient(create_label_app(ReviewSession(pool, table, audit, [])))

    def decide(action: str, label: str = "") -> dict:
        key = client.get("/api/state").json()["item"]["key"]
        response = client.post("/api/review", json={"key": key, "action": action, "label": label})
        assert response.status_code == 200, response.text
        return response.json()

    decide("keep")
    decide("relabel", "fox")
    state = decide("remove")
    assert state["item"]["kind"] == "duplicate" and state["reviewed"] == 3
    resumed = TestClient(create_label_app(ReviewSession(pool, table, audit, [])))  # a restart: same finding
    assert resumed.get("/api/state").json()["item"]["key"] == state["item"]["key"]
    assert decide("remove_b")["item"] is None
    assert client.post("/api/undo").json()["item"]["kind"] == "duplicate"
    assert decide("remove_b")["reviewed"] == 4
    by_path = {row["path"]: row for row in rows(table)}
    assert by_path["cat/1.png"] == {"path": "cat/1.png", "label": "cat", "reviewed": "1", "removed": ""}
    assert by_path["dog/2.png"]["label"] == "fox" and by_path["fox/3.png"]["removed"] == "1"
    assert by_path["cat/5.png"]["removed"] == "1" and by_path["cat/4.png"]["removed"] == ""
    assert [row.path for row in read_table(table).rows] == ["cat/1.png", "dog/2.png", "cat/4.png"]  # train's view
    assert all((pool / path).is_file() for path in by_path)  # nothing deleted


def test_train_leaves_removed_rows_out(tmp_path):
    from tlearn.config import DataConfig
    from tlearn.data import resolve_split

    data = make_folder(tmp_path / "data", per_class=4)
    table = tmp_path / "labels.csv"
    lines = [f"{p.relative_to(data).as_posix()},{p.parent.name},{int(p.name == '0.png')}" for p in data.rglob("*.png")]
    table.write_text("path,label,removed\n" + "\n".join(lines) + "\n")
    found = resolve_split(DataConfig(source=str(data), labels=str(table)), "all", 0)
    names = [Path(found.samples.describe(i)).name for i in range(len(found.samples))]
    assert len(names) == 9 and "0.png" not in names


def test_the_lock_file_is_beside_the_table_and_a_missing_table_starts_empty(tmp_path):
    table = AnswerTable(tmp_path / "new" / "labels.csv")
    assert table.read().rows == []
    assert table.set("a.png", {"label": "x"}) is None
    assert (tmp_path / "new" / ".labels.csv.lock").exists()
    assert rows(tmp_path / "new" / "labels.csv") == [{"path": "a.png", "label": "x"}]


@pytest.mark.parametrize("case, message", [
    ("empty", "has no images"),
    ("outside", "is not an image of the pool"),
    ("classes", "does not list label(s)"),
    ("port", "cannot listen on 127.0.0.1"),
    ("refit", "--refit-every must be at least 1"),
])
def test_bad_input_is_one_line_and_exit_2(pool, tmp_path, case, message):
    table = tmp_path / "labels.csv"
    table.write_text("path,label\ncat/0.png,cat\n")
    flags = {"pool": str(pool), "port": "0", "refit": "10", "classes": "cat,dog,fox"}
    holder = socket.socket()
    try:
        if case == "empty":
            (tmp_path / "empty").mkdir()
            flags["pool"] = str(tmp_path / "empty")
        elif case == "outside":
            table.write_text("path,label\nelsewhere/x.png,cat\n")
        elif case == "classes":
            flags["classes"] = "dog,fox"
        elif case == "port":
            holder.bind(("127.0.0.1", 0))
            holder.listen(1)
            flags["port"] = str(holder.getsockname()[1])
        elif case == "refit":
            flags["refit"] = "0"
        result = run_cli("label", "--pool", flags["pool"], "--labels", str(table), "--classes", flags["classes"],
                         "--port", flags["port"], "--refit-every", flags["refit"], *TINY, timeout=300)
    finally:
        holder.close()
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
