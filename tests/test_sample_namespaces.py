"""A client named by its container's pid and thread id, mapped to the process and thread seen here.

The real case runs a Python process in a new pid namespace (``unshare --pid``, root only), where it
is pid 1, as a server's main process in a container; the edge cases use a /proc tree of files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from contend.sample.attribution import Client
from contend.sample.namespaces import (
    in_our_namespace,
    ns_pids,
    pid_of_socket_in,
    resolver_in_our_namespace,
    source_reader,
    with_thread_states,
)
from tests.conftest import wait_for

IN_NAMESPACE = """
import json, os, sys, threading
def serve():
    print(json.dumps({"pid": os.getpid(), "ntid": threading.get_native_id()}), flush=True)
    sys.stdin.read()  # until the test closes stdin
thread = threading.Thread(target=serve)
thread.start()
thread.join()
"""


def fake_proc(root: Path, pid: int, levels: list[int], threads: dict[int, list[int]]) -> None:
    """Write /proc/<pid>/status and its threads' status files with these NSpid lines."""
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "status").write_text(f"Name:\tpython\nNSpid:\t{' '.join(map(str, levels))}\n")
    for tid, tid_levels in threads.items():
        (root / str(pid) / "task" / str(tid)).mkdir(parents=True)
        (root / str(pid) / "task" / str(tid) / "status").write_text(
            f"NSpid:\t{' '.join(map(str, tid_levels))}\n")


def test_a_process_of_this_namespace_keeps_its_numbers():
    me = Client(pid=os.getpid(), role="web", thread_id=threading.get_ident(),
                native_thread_id=threading.get_native_id())
    assert ns_pids(os.getpid())[0] == os.getpid()
    assert in_our_namespace(me, [os.getpid()]) == me


def test_two_containers_each_with_pid_1_are_told_apart_by_the_thread(tmp_path: Path):
    fake_proc(tmp_path, 4100, [4100, 1], {4100: [4100, 1], 4107: [4107, 7]})   # web: pid 1, thread 7
    fake_proc(tmp_path, 5200, [5200, 1], {5200: [5200, 1]})                     # a worker: pid 1
    web_thread = Client(pid=1, role="web", thread_id=99, native_thread_id=7)
    # the pid as seen here; the thread keeps its container's number, the one py-spy reports
    assert in_our_namespace(web_thread, [4100, 5200], tmp_path) == Client(
        pid=4100, role="web", thread_id=99, native_thread_id=7)
    worker = Client(pid=1, role="worker-0", thread_id=98, native_thread_id=1)
    # thread 1 is the main thread of both: two answers, so the client is left as it is
    assert in_our_namespace(worker, [4100, 5200], tmp_path) == worker
    assert in_our_namespace(worker, [5200], tmp_path).pid == 5200
    # a pid no candidate carries: unchanged
    stranger = Client(pid=3, native_thread_id=3)
    assert in_our_namespace(stranger, [4100, 5200], tmp_path) == stranger
    # named by the socket (no thread): the one candidate with that pid
    assert in_our_namespace(Client(pid=1, via="socket"), [4100], tmp_path).pid == 4100


def test_a_gone_process_reads_as_no_namespace(tmp_path: Path):
    assert ns_pids(4242, proc=tmp_path) == []
    client = Client(pid=1, native_thread_id=1)
    assert in_our_namespace(client, [4242], tmp_path) == client


@pytest.mark.integration
def test_pid_1_of_a_new_pid_namespace_is_mapped_to_its_host_pid_and_thread():
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs unshare(1) and root to make a pid namespace")
    proc = subprocess.Popen([unshare, "--pid", "--fork", "--kill-child", sys.executable, "-c", IN_NAMESPACE],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        seen_inside = json.loads(proc.stdout.readline())
        assert seen_inside["pid"] == 1
        child = wait_for(lambda: psutil.Process(proc.pid).children())
        assert isinstance(child, list)
        host_pid = child[0].pid
        client = Client(pid=1, role="web", thread_id=5, native_thread_id=seen_inside["ntid"])
        mapped = resolver_in_our_namespace([os.getpid(), host_pid], lambda backend: client)({"pid": 77})
        assert mapped is not None
        assert mapped == Client(pid=host_pid, role="web", thread_id=5, native_thread_id=seen_inside["ntid"])
        assert ns_pids(host_pid) == [host_pid, 1]
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_a_containers_sources_are_read_through_its_root(tmp_path: Path):
    # /proc/<pid>/root of a container is a directory other than this process's /
    fake_proc(tmp_path, 4100, [4100, 1], {})
    root = tmp_path / "4100" / "root"
    (root / "app").mkdir(parents=True)
    (root / "app" / "views.py").write_text("with lock:\n    pass\n")
    read = source_reader([4100], tmp_path)
    assert read is not None
    assert read("/app/views.py") == "with lock:\n    pass\n"
    # a file the container does not have: this machine's
    assert read(__file__) == Path(__file__).read_text()
    # no candidate in a container: the default reader (which follows file changes)
    assert source_reader([os.getpid()]) is None


def test_a_containers_thread_states_are_read_here(tmp_path: Path):
    # py-spy on the host looks the state up under the container's thread number and calls every
    # thread active; the host's /proc says which one runs
    fake_proc(tmp_path, 4100, [4100, 1], {4100: [4100, 1], 4107: [4107, 7]})
    (tmp_path / "4100" / "task" / "4100" / "stat").write_text("4100 (python (web)) S 1 4100 ...\n")
    (tmp_path / "4100" / "task" / "4107" / "stat").write_text("4107 (python) R 1 4100 ...\n")
    threads = [{"os_thread_id": 1, "active": True, "idle": False},
               {"os_thread_id": 7, "active": True, "idle": False},
               {"os_thread_id": 9, "active": True, "idle": False}]  # gone since the dump
    assert with_thread_states(4100, threads, tmp_path) == [
        {"os_thread_id": 1, "active": False, "idle": True},
        {"os_thread_id": 7, "active": True, "idle": False},
        {"os_thread_id": 9, "active": True, "idle": False}]
    # a process of this namespace: py-spy's own view stands
    assert with_thread_states(os.getpid(), threads) == threads


def test_a_containers_socket_is_found_in_its_own_network_namespace(tmp_path: Path):
    (tmp_path / "self" / "ns").mkdir(parents=True)
    os.symlink("net:[4026531833]", tmp_path / "self" / "ns" / "net")
    fake_proc(tmp_path, 4100, [4100, 1], {})
    (tmp_path / "4100" / "ns").mkdir()
    os.symlink("net:[4026532999]", tmp_path / "4100" / "ns" / "net")
    (tmp_path / "4100" / "net").mkdir()
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout "
    header += "inode\n"
    # 10.89.0.5:41122 -> 10.89.0.2:5432, as the kernel prints it (little-endian words, hex port)
    (tmp_path / "4100" / "net" / "tcp").write_text(
        header + "   0: 0500590A:A0A2 0200590A:1538 01 00000000:00000000 00:00000000 00000000     0        0 "
        "777 1 0000000000000000 20 4 30 10 -1\n")
    (tmp_path / "4100" / "fd").mkdir()
    os.symlink("socket:[777]", tmp_path / "4100" / "fd" / "7")
    assert pid_of_socket_in([4100], "10.89.0.5", 41122, tmp_path) == 4100
    assert pid_of_socket_in([4100], "10.89.0.5", 41123, tmp_path) is None
    assert pid_of_socket_in([4100], None, None, tmp_path) is None
    # a process of this network namespace: psutil's socket table answers for it
    assert pid_of_socket_in([os.getpid()], "127.0.0.1", 1) is None
