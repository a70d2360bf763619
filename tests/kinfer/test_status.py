"""Conditions from pods and Deployments: reasons a person can act on."""

from __future__ import annotations

from typing import Any

import pytest

from kinfer.status import conditions, pod_problem


def _pod(waiting: str, message: str = "", restarts: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"name": "m-1"},
        "status": {
            "containerStatuses": [
                {
                    "name": "server",
                    "image": "registry.example/kinfer:bad",
                    "restartCount": restarts,
                    "state": {"waiting": {"reason": waiting, "message": message}},
                }
            ]
        },
    }


@pytest.mark.parametrize(
    ("waiting", "reason", "words"),
    [
        ("ImagePullBackOff", "ImagePullFailed", "cannot pull image registry.example/kinfer:bad"),
        ("ErrImagePull", "ImagePullFailed", "cannot pull image"),
        ("CrashLoopBackOff", "CrashLoop", "keeps failing (CrashLoopBackOff, 4 restarts)"),
    ],
)
def test_pod_problems(waiting: str, reason: str, words: str) -> None:
    problem = pod_problem(_pod(waiting, "back-off", restarts=4))
    assert problem is not None
    assert problem[0] == reason and words in problem[1]


def test_healthy_pod_has_no_problem() -> None:
    assert (
        pod_problem(
            {
                "metadata": {"name": "m"},
                "status": {"containerStatuses": [{"name": "server", "state": {"running": {}}}]},
            }
        )
        is None
    )


def test_scaled_to_zero_is_ready() -> None:
    deployment = {
        "metadata": {"name": "m", "generation": 2},
        "spec": {"replicas": 0},
        "status": {"observedGeneration": 2},
    }
    ready, progressing, degraded = conditions(deployments=[deployment], pods=[], desired=0)
    assert (ready.status, ready.reason) == ("True", "ScaledToZero")
    assert progressing.status == "False" and degraded.status == "False"


def test_rollout_in_progress() -> None:
    deployment = {
        "metadata": {"name": "m", "generation": 3},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 3, "readyReplicas": 2, "updatedReplicas": 1},
    }
    ready, progressing, _ = conditions(deployments=[deployment], pods=[], desired=2)
    assert ready.status == "True"
    assert (progressing.status, progressing.reason) == ("True", "Updating")
