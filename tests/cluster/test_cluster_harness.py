"""The cluster harness: actors land on the node of their pool resource, fakes record that node, nodes come and go."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from actors.runner import MINIMAL_ENV
from tests.fakes.install import install_fake, read_calls

GET_TIMEOUT = 60  # a hang guard; every call here takes well under a second


def spawner(ray: Any, resource: str) -> Any:
    """An actor on a node advertising `resource` that runs an argv as a subprocess, as a remote runner would."""

    class Spawner:  # defined here, so Ray ships it by value to workers that cannot import this test module
        def run(self, argv: list[str], env: dict[str, str]) -> int:
            done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
            return done.returncode

    return ray.remote(Spawner).options(resources={resource: 1}, num_cpus=0).remote()


def scan(ray: Any, actor: Any, nmap: Path) -> Any:
    """The actor's run of the fake nmap (an object ref)."""
    return actor.run.remote([str(nmap), "-p", "22", "-oX", "-", "10.0.0.5"], dict(MINIMAL_ENV))


def test_a_fake_run_by_an_actor_records_the_node_of_the_actors_pool_resource(ray_cluster, ray_driver, tmp_path):
    nmap = install_fake(tmp_path, "nmap")
    for resource in ("labrecon_b", "labrecon_a"):
        assert ray_driver.get(scan(ray_driver, spawner(ray_driver, resource), nmap), timeout=GET_TIMEOUT) == 0
    on_b, on_a = (call["ray_node"] for call in read_calls(nmap))
    assert [ray_cluster.name_of(on_b), ray_cluster.name_of(on_a)] == ["b", "a"]
    assert "labrecon_b" in on_b["resources"] and "labrecon_a" not in on_b["resources"]
    assert "labrecon_a" in on_a["resources"] and "labrecon_b" not in on_a["resources"]


def test_a_removed_node_takes_its_actors_along_and_a_new_node_takes_the_waiting_ones(
    ray_cluster, ray_driver, tmp_path
):
    nmap = install_fake(tmp_path, "nmap")
    before = spawner(ray_driver, "labrecon_b")
    assert ray_driver.get(scan(ray_driver, before, nmap), timeout=GET_TIMEOUT) == 0
    removed = ray_cluster.nodes["b"].node_id

    ray_cluster.remove_node("b")
    with pytest.raises(ray_driver.exceptions.ActorDiedError):
        ray_driver.get(scan(ray_driver, before, nmap), timeout=GET_TIMEOUT)
    waiting = scan(ray_driver, spawner(ray_driver, "labrecon_b"), nmap)  # no node has labrecon_b: it waits
    ray_cluster.add_node("b", "labrecon_b")
    assert ray_driver.get(waiting, timeout=GET_TIMEOUT) == 0

    first, second = (call["ray_node"]["node_id"] for call in read_calls(nmap))
    assert first == removed and second == ray_cluster.nodes["b"].node_id != removed
    assert ray_cluster.name_of({"node_id": removed}) is None
