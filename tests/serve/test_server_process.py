"""`tlearn serve` as a process on 127.0.0.1, on a free port it picks itself (--port 0): graceful
shutdown on SIGTERM and SIGINT with a request in flight, a port in use, a run without its model,
and the web page in headless Chromium. Every server a test starts is gone when it ends."""
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tlearn.cli import main

from conftest import ServerProcess, make_folder, train_tiny

START_SECONDS = 180  # a loaded machine: importing, loading the model and exporting its graph


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    data = make_folder(root / "data", per_class=6, split_dirs=True)
    _, run = train_tiny(root, data, strategy="linear-probe", epochs=1)
    return run, data


class Server(ServerProcess):
    """`tlearn serve RUN --port 0 FLAGS` in a subprocess; its address read from what it prints."""

    def __init__(self, run, *flags: str):
        super().__init__([sys.executable, "-m", "tlearn", "serve", str(run), "--port", "0", *flags])


@pytest.fixture
def servers(server_processes):
    return lambda run, *flags: server_processes(Server(run, *flags))


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_answers_requests_in_flight_then_exits_0(run_folder, servers, stop_signal):
    run, data = run_folder
    server = servers(run)
    image = next((data / "val" / "cat").iterdir()).read_bytes()
    signalled = threading.Event()

    def body():  # half the image, then the rest only after the signal: the request is in flight throughout
        yield image[:len(image) // 2]
        signalled.wait(timeout=60)
        yield image[len(image) // 2:]

    answers = []
    request = threading.Thread(target=lambda: answers.append(httpx.post(f"{server.url}/predict", content=body(),
                                                                        timeout=60)))
    request.start()
    deadline = time.monotonic() + 30
    while httpx.get(f"{server.url}/health").json()["receiving"] == 0:  # until the server reads its body
        assert time.monotonic() < deadline
        time.sleep(0.05)
    server.process.send_signal(stop_signal)
    time.sleep(0.5)  # the server is shutting down while the request still sends
    signalled.set()
    request.join(timeout=60)
    assert answers and answers[0].status_code == 200, answers
    assert answers[0].json()["predictions"][0]["label"] in {"cat", "dog", "fox"}
    assert server.process.wait(timeout=60) == 0
    assert "stopped" in server.process.stdout.read()
    assert server.port_closed()


def test_port_in_use_is_one_line_and_exit_2(run_folder):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "tlearn", "serve", str(run_folder[0]), "--port", str(port)],
                                capture_output=True, text=True, timeout=START_SECONDS)
    assert result.returncode == 2
    assert result.stderr.startswith("tlearn: error: cannot listen on 127.0.0.1:") and result.stderr.count("\n") == 1


def test_run_without_its_model_is_one_line_and_exit_2(run_folder, tmp_path, capsys):
    assert main(["serve", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error == f"tlearn: error: {tmp_path} has no model.json: serve needs a finished run folder\n"
    assert main(["serve", str(tmp_path / "absent")]) == 2
    assert main(["serve", str(run_folder[0]), "--max-batch", "0"]) == 2


def test_page_in_headless_chromium(run_folder, servers, tmp_path):
    from infer.test_deploy import _browser, _chromium  # the report's browser helpers

    chromium, driver = _chromium()
    run, data = run_folder
    server = servers(run)
    paths = [next((data / "val" / name).iterdir()) for name in ("cat", "fox")]
    expected = [httpx.post(f"{server.url}/predict", content=path.read_bytes(), params={"top_k": 3}, timeout=60)
                .json()["predictions"][0] for path in paths]
    browser = _browser(chromium, driver)
    try:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        browser.get(server.url + "/")
        WebDriverWait(browser, 30).until(lambda b: "classes" in b.find_element(By.ID, "about").text)
        browser.find_element(By.ID, "files").send_keys("\n".join(str(path) for path in paths))
        WebDriverWait(browser, 60).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".result")) == 2)
        cards = browser.find_elements(By.CSS_SELECTOR, ".result")
        for card, path, answer in zip(cards, paths, expected):
            labels = [row.find_element(By.CSS_SELECTOR, ".label").text for row in card.find_elements(By.CSS_SELECTOR,
                                                                                                     ".row")]
            assert card.get_attribute("data-file") == path.name and labels == answer["labels"]
            assert card.find_element(By.CSS_SELECTOR, ".prob").text == f"{100 * answer['probs'][0]:.1f}%"
        cards[0].find_element(By.CSS_SELECTOR, "button.explain").click()
        WebDriverWait(browser, 60).until(
            lambda b: b.find_element(By.CSS_SELECTOR, ".result img").get_attribute("src").startswith("data:image/png"))
        browser.save_screenshot(str(tmp_path / "serve-page.png"))
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors
        assert browser.find_element(By.ID, "error").text == ""
    finally:
        browser.quit()
