"""The single-node cluster whose pods run (scripts/k8s_node.py): one per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.k8s_node import NodeCluster, shared_node, stop_shared_node


@pytest.fixture(scope="session")
def node_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    """Started at the first test that needs it, stopped (by pid, host put back) at the end."""
    cluster = shared_node(tmp_path_factory.mktemp("k8s-node"))
    yield cluster
    stop_shared_node()


@pytest.fixture
def node(node_session: NodeCluster) -> NodeCluster:
    """The session's node cluster, started again if an earlier test stopped it."""
    node_session.start()
    return node_session
