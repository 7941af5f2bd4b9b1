"""Restart points: Pub/Sub snapshots a stopped or crashed DirectRunner job is replayed from.

The DirectRunner's Pub/Sub source acknowledges a pull before processing it, so
whatever a job had pulled but not yet written when it stopped (SIGTERM, Ctrl-C,
SIGKILL, a crash) is gone from the subscription's backlog. A snapshot keeps
what the subscription had not acknowledged when it was taken plus everything
published since, whatever the publish times (a time seek goes by publish time,
and a backlog pulled late would slip past it), so seeking back to one
redelivers all the job pulled after it.

Each job, before its first pull, takes a snapshot (its start point), then one
every `SNAPSHOT_SECONDS` while it runs. A snapshot taken at T is a safe restart
point once the job is known to have been running at T + margin, where the
margin is longer than the most a pulled message can take to be written
(processing, write batching, write retries): a later snapshot of the same job
is that proof, and it is durable, so a crash needs no shutdown hook. The
restart point is the newest snapshot so proven, else the job's start point.
Snapshot names carry the subscription, the job's start and their own time:
`SUB-restart-<job start ms>-<taken ms>`. Older snapshots are deleted as the
point moves on; only the last job's count.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

SNAPSHOT_SECONDS = 30  # how often a running job takes a snapshot
CALL_SECONDS = 10  # bound on one attempt of a Pub/Sub admin call
RETRY_SECONDS = 30  # bound on all attempts of one call (the client's default is 60 s)


@dataclass(frozen=True, order=True, slots=True)
class Point:
    """One snapshot: the start of the job that took it and when it was taken (ms)."""

    job_start_ms: int
    taken_ms: int

    def name(self, subscription_name: str) -> str:
        return f"{subscription_name}-restart-{self.job_start_ms}-{self.taken_ms}"


def parse_point(snapshot_name: str, subscription_name: str) -> Point | None:
    """`SUB-restart-<start>-<taken>` -> Point; None for any other snapshot."""
    m = re.fullmatch(re.escape(subscription_name) + r"-restart-(\d{13})-(\d{13})",
                     snapshot_name)
    return Point(int(m.group(1)), int(m.group(2))) if m else None


def restart_point(points: list[Point], margin_ms: int) -> Point | None:
    """The newest safe point of the last job: taken at least `margin_ms` before that
    job's newest snapshot (it was still running then), else its start point."""
    if not points:
        return None
    last_job = max(p.job_start_ms for p in points)
    own = sorted(p for p in points if p.job_start_ms == last_job)
    proven = [p for p in own if p.taken_ms + margin_ms <= own[-1].taken_ms]
    return proven[-1] if proven else own[0]


def obsolete(points: list[Point], margin_ms: int) -> list[Point]:
    """Snapshots no restart can need any more: older than the restart point."""
    keep = restart_point(points, margin_ms)
    return [p for p in points if keep is not None and p < keep]


class RestartPoints:
    """The restart snapshots of one subscription (`projects/P/subscriptions/S`)."""

    def __init__(self, subscription_path: str, margin_ms: int, client=None):
        from google.api_core.retry import Retry
        from google.cloud import pubsub_v1

        self._subscription = subscription_path
        self._project = subscription_path.split("/subscriptions/")[0]
        self._name = subscription_path.rsplit("/", 1)[-1]
        self._margin_ms = margin_ms
        self._client = client or pubsub_v1.SubscriberClient()
        self._bounds = {"timeout": CALL_SECONDS, "retry": Retry(timeout=RETRY_SECONDS)}

    def _path(self, point: Point) -> str:
        return f"{self._project}/snapshots/{point.name(self._name)}"

    def points(self) -> list[Point]:
        snapshots = self._client.list_snapshots(request={"project": self._project},
                                                **self._bounds)
        found = (parse_point(s.name.rsplit("/", 1)[-1], self._name) for s in snapshots)
        return [p for p in found if p is not None]

    def seek_back(self) -> Point | None:
        """Seeks the subscription to the restart point; the point, or None if there is none."""
        point = restart_point(self.points(), self._margin_ms)
        if point is not None:
            self._client.seek(request={"subscription": self._subscription,
                                       "snapshot": self._path(point)}, **self._bounds)
        return point

    def take(self, job_start_ms: int, now_ms: int) -> None:
        """Takes a snapshot now (before the job's first pull: its start point), then
        deletes the ones no restart needs any more (all of earlier jobs)."""
        point = Point(job_start_ms, now_ms)
        self._client.create_snapshot(request={"name": self._path(point),
                                              "subscription": self._subscription},
                                     **self._bounds)
        points = self.points()
        current = [p for p in points if p.job_start_ms == job_start_ms]
        for old in set(points) - set(current) | set(obsolete(current, self._margin_ms)):
            self._client.delete_snapshot(request={"snapshot": self._path(old)},
                                         **self._bounds)
