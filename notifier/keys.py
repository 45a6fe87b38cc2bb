"""The notifier's Redis keys, all under ``P:notify`` (``P`` = ``redis.key_prefix``).

Claiming reuses :class:`flusher.claim.Claimer` over ``Keys(P:notify)``, so the
frames' queue, in-flight batches and heartbeats are the flusher's shapes in a
namespace of their own, per shard (``{T}``: the hash tag of one shard of the
stream, ``{stream}`` or ``{stream~N}``: oceanus/buffer.py)::

    P:notify:q:{T}                          LIST   frames copied from P:q:{T} by the tap, or by the
                                                   flusher's claim when the tap had not reached them
    P:notify:tapped:{T}                     STRING how many frames at the head of P:q:{T} are in
                                                   P:notify:q:{T} already (notifier/tap.py; who
                                                   else changes it: oceanus/buffer.py)
    P:notify:inflight:{T}:{owner}:{n}       LIST   frames being evaluated by one notifier
    P:notify:inflight-index:{T}             SET    names of the shard's in-flight keys
    P:notify:hb:{owner}                     STRING heartbeat of a notifier (TTL; deliveries check it)
    P:notify:hb:{T}:{owner}                 STRING the same in one shard's slot (re-claims check it)

Delivery, per channel ``C`` and rule ``R``::

    P:notify:jobs:{C}                 LIST   delivery jobs waiting (JSON :class:`notifier.jobs.Job`)
    P:notify:sending:{C}:{owner}      LIST   the job a notifier is delivering (moved back if it dies)
    P:notify:sending-index:{C}        SET    names of the channel's sending lists
    P:notify:dead:{C}                 LIST   jobs given up on, JSON ``{"job", "reason", "at"}``
    P:notify:sent:{job id}            STRING the delivery key: set once the channel accepted (TTL)
    P:notify:rate-ids:{R}:{C}:{window} SET   job ids let through in one rate-limit window (TTL)
    P:notify:held-ids:{R}:{C}:{window} SET   job ids held back in that window (summed up later)
    P:notify:thr:{R}:{group}          ZSET   event ids of a threshold window, scored by event ms
    P:notify:fired:{R}:{group}        STRING a threshold fired; set for its window (PX)
    P:notify:recent                   LIST   newest first, the latest outcomes (the status page)

On Redis Cluster the delivery keys above (not the claim keys, nor ``P:notify:recent``) carry
one hash tag, ``P:notify:{notify}:jobs:{C}`` and so on: a threshold's script writes its window,
its mark and the jobs of each of its channels at once, and a delivery moves a job between two
lists of its channel, so all of them must share one slot. Notifications are few; one master
serves them. One instance keeps the names above (the tag would change nothing there and
strand the jobs a running notifier left under the old names).
"""

from __future__ import annotations

from oceanus.buffer import Keys

#: Outcomes kept for the status page.
RECENT_MAX = 100


#: The hash tag of every delivery key on Redis Cluster (module docstring).
DELIVERY_TAG = "{notify}"


class NotifyKeys:
    __slots__ = ("base", "claim", "delivery")

    def __init__(self, prefix: str, cluster: bool = False) -> None:
        core = Keys(prefix)
        self.base = core.notify_prefix()
        #: The namespace handed to the flusher's Claimer.
        self.claim = Keys(self.base)
        #: Where the delivery keys live: one slot on a cluster.
        self.delivery = f"{self.base}:{DELIVERY_TAG}" if cluster else self.base

    def jobs(self, channel: str) -> str:
        return f"{self.delivery}:jobs:{channel}"

    def sending(self, channel: str, owner: str) -> str:
        return f"{self.delivery}:sending:{channel}:{owner}"

    def sending_index(self, channel: str) -> str:
        return f"{self.delivery}:sending-index:{channel}"

    def dead(self, channel: str) -> str:
        return f"{self.delivery}:dead:{channel}"

    def sent(self, job_id: str) -> str:
        return f"{self.delivery}:sent:{job_id}"

    def rate(self, rule: str, channel: str, window: int) -> str:
        return f"{self.delivery}:rate-ids:{rule}:{channel}:{window}"

    def held(self, rule: str, channel: str, window: int) -> str:
        return f"{self.delivery}:held-ids:{rule}:{channel}:{window}"

    def threshold(self, rule: str, group: str) -> str:
        return f"{self.delivery}:thr:{rule}:{group}"

    def fired(self, rule: str, group: str) -> str:
        return f"{self.delivery}:fired:{rule}:{group}"

    def recent(self) -> str:
        return Keys(self.base.removesuffix(":notify")).notify_recent()
