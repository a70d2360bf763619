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


def _initializing(
    state: dict[str, Any], last: dict[str, Any] | None = None, restarts: int = 0
) -> dict[str, Any]:
    init: dict[str, Any] = {"name": "storage-initializer", "restartCount": restarts, "state": state}
    if last is not None:
        init["lastState"] = {"terminated": last}
    return {"metadata": {"name": "m-1"}, "status": {"initContainerStatuses": [init]}}


DENIED = "Forbidden: s3://models/ranker/: HTTP 403 (check the credentials): AccessDenied"


def test_a_failed_download_names_the_uri_and_the_cause() -> None:
    failing = _initializing(
        {"waiting": {"reason": "CrashLoopBackOff"}}, {"exitCode": 1, "message": DENIED}, 2
    )
    assert pod_problem(failing) == ("ModelDownloadFailed", f"pod m-1: {DENIED} (2 retries)")
    (ready, _, degraded) = conditions(
        deployments=[{"metadata": {"name": "m"}, "spec": {"replicas": 1}, "status": {}}],
        pods=[failing],
        desired=1,
    )
    assert ready.reason == degraded.reason == "ModelDownloadFailed" and DENIED in ready.message


def test_a_missing_secret_is_a_download_problem() -> None:
    waiting = {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "s3-keys" not found'}}
    assert pod_problem(_initializing(waiting)) == (
        "ModelDownloadFailed",
        'pod m-1: secret "s3-keys" not found',
    )


def test_a_download_that_succeeded_after_retries_is_no_problem() -> None:
    done = _initializing(
        {"terminated": {"exitCode": 0, "message": "{}"}}, {"exitCode": 1, "message": DENIED}, 1
    )
    assert pod_problem(done) is None
    running = _initializing({"running": {}})
    assert pod_problem(running) is None


def test_cold_start_is_read_from_the_latest_ready_pod() -> None:
    from kinfer.status import last_start, last_start_message

    def ready_pod(name: str, created: str, started: str, ready: str, report: str) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "creationTimestamp": created},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": ready}],
                "containerStatuses": [{"name": "server", "state": {"running": {"startedAt": started}}}],
                "initContainerStatuses": [
                    {
                        "name": "storage-initializer",
                        "state": {"terminated": {"exitCode": 0, "message": report}},
                    }
                ],
            },
        }

    miss = '{"download_seconds": 4.25, "bytes": 500000000, "cache_hit": false}'
    hit = '{"download_seconds": 0.0, "bytes": 0, "cache_hit": true}'
    pods = [
        ready_pod("m-1", "2026-01-01T00:00:00Z", "2026-01-01T00:00:06Z", "2026-01-01T00:00:09Z", miss),
        ready_pod("m-2", "2026-01-01T00:01:00Z", "2026-01-01T00:01:02Z", "2026-01-01T00:01:04Z", hit),
        _initializing({"running": {}}),
    ]
    cold = last_start(pods)
    assert cold == {"pod": "m-2", "createdToReadySeconds": 4.0, "startSeconds": 2.0, "downloadSeconds": 0.0,
                    "downloadBytes": 0, "cacheHit": True}  # fmt: skip
    assert "node cache hit" in last_start_message(cold)
    first = last_start(pods[:1])
    assert first == {"pod": "m-1", "createdToReadySeconds": 9.0, "startSeconds": 3.0, "downloadSeconds": 4.25,
                     "downloadBytes": 500000000, "cacheHit": False}  # fmt: skip
    assert last_start(pods[2:]) is None


TRITON_LOG = (
    "Error: Failed to initialize NVML\n"
    "I1202 22:02:08.3 1 server.cc:674] +-------+---------+--------+\n"
    "E1202 22:02:08.4 1 model_lifecycle.cc:654] \"failed to load 'm' version 1: Internal: "
    'RuntimeError: PytorchStreamReader failed reading zip archive"\n'
    "error: creating server: Internal - failed to load all models\n"
)


def test_a_crash_loop_carries_the_servers_own_reason() -> None:
    pod = _pod("CrashLoopBackOff", "back-off 4s restarting failed container server", restarts=3)
    pod["status"]["containerStatuses"][0]["lastState"] = {
        "terminated": {"exitCode": 1, "message": TRITON_LOG}
    }
    problem = pod_problem(pod)
    assert problem is not None and problem[0] == "CrashLoop"
    assert problem[1].endswith(
        "; it said: E1202 22:02:08.4 1 model_lifecycle.cc:654] \"failed to load 'm' version 1: Internal: "
        'RuntimeError: PytorchStreamReader failed reading zip archive"'
    )


def test_a_refused_triton_repository_is_its_own_reason_after_a_finished_download() -> None:
    refusal = (
        "triton-repo: config.pbtxt disagrees with signature.json: "
        "input 'x': dims [9] in config.pbtxt, [8] in signature.json"
    )
    pod = {
        "metadata": {"name": "m-1"},
        "status": {
            "initContainerStatuses": [
                {"name": "storage-initializer", "state": {"terminated": {"exitCode": 0}}},
                {
                    "name": "triton-repository",
                    "restartCount": 1,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "message": refusal + "\n"}},
                },
            ]
        },
    }
    assert pod_problem(pod) == ("ModelRepositoryInvalid", f"pod m-1: {refusal} (1 retries)")
