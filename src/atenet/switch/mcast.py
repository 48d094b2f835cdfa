"""IGMP / MLD snooping: which local ports and peer nodes listen to which multicast group.

Sans-I/O, one table per network per node. The switch hands it every frame to a multicast MAC
(never unicast: the unicast hot path pays nothing) through :meth:`Groups.handle`, with the
source (a local port object, or a peer node's sender id) and the time; it answers where the
frame goes (docs/learning.md, "Multicast"):

* ``None``: flood, as without snooping — non-IP multicast, link-local groups (224.0.0.0/24 and
  every IPv6 group of interface- or link-local scope, ``ff01::/16`` and ``ff02::/16``: all-nodes,
  all-routers, solicited-node, MLDv2 routers, …, so ARP, ND, DHCPv6 and routing protocols never
  depend on snooping), groups nobody joined (unregistered, RFC 4541 §2.1.2), IGMP/MLD queries
  (every host must hear them) and malformed IGMP/MLD (counted, then flooded as before);
* :data:`REPORT`: a membership report, leave or done. It is learned from, then sent to every
  peer node (so each node learns which nodes have listeners), to mirror ports and to local
  *router ports* (ports that sent a query) — but not to the other hosts: RFC 4541 §2.1.1, and
  the reason is real: an IGMPv2 / MLDv1 host that hears another member's report for its group
  suppresses its own, and the switch would never learn its port;
* a dict whose keys are the members (local ports and peer sender ids): a registered group goes
  to them only (the switch adds mirror ports, router ports and ports past their cap).

What counts (groups are tracked, sources are not: an INCLUDE report with sources joins the
whole group, which is more than the host asked for and never less):

* IGMPv1/v2 report → join; IGMPv2 leave → that port leaves; IGMPv3 report: each record
  IS_EX / TO_EX / ALLOW (with sources) / IS_IN (with sources) / TO_IN (with sources) joins,
  IS_IN / TO_IN with no sources leaves, BLOCK is ignored (group-level: the rest of the group
  is still wanted).
* MLDv1 report → join, done → leave; MLDv2 report records as IGMPv3's. MLD sits behind the
  IPv6 Hop-by-Hop header (Router Alert): extension headers are walked (hop-by-hop, routing,
  destination options), IPv4 options skipped by the header length. Checksums are verified.

Leaves: a leave from a **local port** removes that port's membership at once (a `tok` port is
one host; a bridge behind one port gets its other members back at the next query, as with
Linux's fast leave). A leave from a **peer** only says that one host behind that node left —
other hosts there may still listen — so it is counted (``peer_leave``) and the node stays a
member until its membership times out; that node then hands the group's frames to no port.

Expiry: a membership lasts :data:`MEMBERSHIP_TIMEOUT` (260 s: robustness 2 × query interval
125 s + 10 s response time, RFC 3376 §8.4) after its last report, by the injected time. The
gateway of each node queries its local ports every 125 s (:mod:`atenet.router.gateway`), so
hosts keep re-reporting; without a gateway, memberships simply expire and the group, then
unregistered, floods again — the safe direction.

Bounds: :data:`GROUPS_MAX` groups per network (a new group past it stays unregistered, i.e.
flooded: counted ``full``) and :data:`PORT_GROUPS_MAX` groups per local port (past it the port
gets *every* multicast frame, like a router port, so it never misses what it joined: counted
``port_full``). Nothing already in the table is ever evicted for a newcomer. Peers are bounded
by the group cap. Nothing here raises.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from atenet.wire.checksum import pseudo_header_v6, verify

MEMBERSHIP_TIMEOUT = 260.0
"""Seconds a membership lasts after its last report (RFC 3376 / 3810: 2 × 125 + 10)."""

GROUPS_MAX = 2048
"""Groups one network's table holds on one node (OVS's ``mcast-snooping-table-size``)."""

PORT_GROUPS_MAX = 256
"""Groups one local port may join before it gets all multicast instead."""

SWEEP = 10.0
"""Seconds between sweeps of expired memberships (a membership lives 260 to 270 s)."""

REPORT: dict[Any, float] = {}
"""The :meth:`Groups.handle` answer for a membership report / leave (see the module doc)."""

# IGMP (RFC 1112, 2236, 3376) and MLD (RFC 2710, 3810) message types.
IGMP_QUERY, IGMP_V1_REPORT, IGMP_V2_REPORT, IGMP_LEAVE, IGMP_V3_REPORT = (
    0x11,
    0x12,
    0x16,
    0x17,
    0x22,
)
MLD_QUERY, MLD_REPORT, MLD_DONE, MLD_V2_REPORT = 130, 131, 132, 143
_MLD_TYPES = (MLD_QUERY, MLD_REPORT, MLD_DONE, MLD_V2_REPORT)
_IS_IN, _IS_EX, _TO_IN, _TO_EX, _ALLOW, _BLOCK = 1, 2, 3, 4, 5, 6
_EXTENSIONS = (0, 43, 60)  # hop-by-hop, routing, destination options: walked to the ICMPv6

Member = Any
"""A local port object or a peer node's sender id (int)."""


class Malformed(Exception):
    """An IGMP / MLD message that cannot be read (caught in :meth:`Groups.handle`)."""


def _group_ok4(group: bytes) -> bool:
    """A group worth tracking: multicast, not 224.0.0.0/24 (always flooded)."""
    return group[0] & 0xF0 == 0xE0 and group[:3] != b"\xe0\x00\x00"


def _group_ok6(group: bytes) -> bool:
    """A group worth tracking: multicast of a scope wider than link-local (ff0X with X > 2)."""
    return group[0] == 0xFF and group[1] & 0x0F > 2


class Groups:
    """Membership of one network's multicast groups on one node (see the module doc)."""

    def __init__(
        self,
        max_groups: int = GROUPS_MAX,
        port_max: int = PORT_GROUPS_MAX,
        timeout: float = MEMBERSHIP_TIMEOUT,
    ) -> None:
        self.max_groups = max_groups
        self.port_max = port_max
        self.timeout = timeout
        self.groups: dict[bytes, dict[Member, float]] = {}
        """Group address (4 or 16 bytes) -> member -> when its membership expires."""
        self.joined: Counter[Member] = Counter()
        """Groups per member (for the per-port cap and status)."""
        self.all_ports: set[Member] = set()
        """Local ports that get every multicast frame: router ports (they sent a query) and
        ports past :attr:`port_max`."""
        self.counters: Counter[str] = Counter()
        """``joins``, ``leaves``, ``peer_leave``, ``queries``, ``expired``, ``full``,
        ``port_full``, ``malformed``, ``selective`` (frames sent to members only)."""
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self.groups)

    # ------------------------------------------------------------------ frames

    def handle(self, frame: bytes, source: Member, now: float) -> dict[Member, float] | None:
        """Where a frame to a multicast MAC goes: ``None`` (flood), :data:`REPORT`, or the
        group's members. Learns from IGMP / MLD messages on the way."""
        if len(frame) < 34:
            return None
        etype = frame[12:14]
        if etype == b"\x08\x00":
            if frame[23] == 2:  # IGMP
                return self.observe(frame, source, now)
            group = frame[30:34]
            if not _group_ok4(group):
                return None
        elif etype == b"\x86\xdd" and len(frame) >= 54:
            nh = frame[20]
            if nh == 0 or (nh == 58 and frame[54] in _MLD_TYPES):  # MLD sits behind hop-by-hop
                found = self.observe(frame, source, now)
                if found is not None:
                    return found
            group = frame[38:54]
            if not _group_ok6(group):
                return None
        else:
            return None
        members = self.groups.get(group)
        if not members:
            return None  # unregistered: flooded
        self.counters["selective"] += 1
        return members

    def targets(self, frame: bytes, now: float) -> dict[Member, float] | None:
        """Where a (non-membership) frame goes, without learning: ``None`` or the members."""
        if len(frame) < 34:
            return None
        if frame[12:14] == b"\x08\x00":
            group = frame[30:34]
            ok = frame[23] != 2 and _group_ok4(group)
        elif frame[12:14] == b"\x86\xdd" and len(frame) >= 54:
            group = frame[38:54]
            ok = _group_ok6(group)
        else:
            return None
        return (self.groups.get(group) or None) if ok else None

    def observe(self, frame: bytes, source: Member, now: float) -> dict[Member, float] | None:
        """Learn from an IGMP / MLD frame from ``source``: :data:`REPORT` for a report or
        leave, ``None`` for anything else (queries, other ICMPv6, malformed: flooded)."""
        try:
            if frame[12:14] == b"\x08\x00":
                return self._igmp(frame, source, now)
            if frame[12:14] == b"\x86\xdd":
                return self._mld(frame, source, now)
        except (Malformed, IndexError):
            pass
        self.counters["malformed"] += 1
        return None

    def _igmp(self, frame: bytes, source: Member, now: float) -> dict[Member, float] | None:
        ihl = (frame[14] & 0x0F) * 4
        total = int.from_bytes(frame[16:18], "big")
        if frame[14] >> 4 != 4 or ihl < 20 or total < ihl + 8 or len(frame) < 14 + total:
            raise Malformed
        body = frame[14 + ihl : 14 + total]
        if not verify(body):
            raise Malformed
        kind = body[0]
        if kind == IGMP_QUERY:
            self._router_port(source)
            return None
        if kind in (IGMP_V1_REPORT, IGMP_V2_REPORT):
            self._join(body[4:8], source, now, _group_ok4)
        elif kind == IGMP_LEAVE:
            self._leave(body[4:8], source, _group_ok4)
        elif kind == IGMP_V3_REPORT:
            self._records(body, 4, source, now, _group_ok4)
        else:
            raise Malformed
        return REPORT

    def _mld(self, frame: bytes, source: Member, now: float) -> dict[Member, float] | None:
        if frame[14] >> 4 != 6:
            raise Malformed
        end = 54 + int.from_bytes(frame[18:20], "big")
        if len(frame) < end:
            raise Malformed
        nh, at = frame[20], 54
        hops = 0
        while nh in _EXTENSIONS:
            hops += 1
            if hops > 8 or at + 8 > end:
                raise Malformed
            nh, at = frame[at], at + (frame[at + 1] + 1) * 8
        if nh != 58 or at + 4 > end or frame[at] not in _MLD_TYPES:
            return None  # not MLD (the caller counts nothing: ordinary multicast)
        body = frame[at:end]
        if not verify(body, pseudo_header_v6(frame[22:38], frame[38:54], 58, len(body))):
            raise Malformed
        kind = body[0]
        if kind == MLD_QUERY:
            self._router_port(source)
            return None
        if len(body) < 24:
            raise Malformed
        if kind == MLD_REPORT:
            self._join(body[8:24], source, now, _group_ok6)
        elif kind == MLD_DONE:
            self._leave(body[8:24], source, _group_ok6)
        else:
            self._records(body, 16, source, now, _group_ok6)
        return REPORT

    def _records(self, body: bytes, size: int, source: Member, now: float, ok: Any) -> None:
        """The group records of an IGMPv3 / MLDv2 report (``size``: address length)."""
        count = int.from_bytes(body[6:8], "big")
        at = 8
        for _ in range(count):
            if at + 4 + size > len(body):
                raise Malformed
            kind, aux, sources = (
                body[at],
                body[at + 1],
                int.from_bytes(body[at + 2 : at + 4], "big"),
            )
            group = body[at + 4 : at + 4 + size]
            at += 4 + size + sources * size + aux * 4
            if at > len(body):
                raise Malformed
            if kind in (_IS_EX, _TO_EX) or (kind in (_IS_IN, _TO_IN, _ALLOW) and sources):
                self._join(group, source, now, ok)
            elif kind in (_IS_IN, _TO_IN):
                self._leave(group, source, ok)
            elif kind not in (_ALLOW, _BLOCK):
                raise Malformed

    # ------------------------------------------------------------------ table

    def _router_port(self, source: Member) -> None:
        self.counters["queries"] += 1
        if source.__class__ is not int and source not in self.all_ports:
            self.all_ports.add(source)  # a router behind this port: it hears every report

    def _join(self, group: bytes, source: Member, now: float, ok: Any) -> None:
        if not ok(group):
            return  # link-local groups are always flooded: nothing to track
        group = bytes(group)
        members = self.groups.get(group)
        if members is None:
            if len(self.groups) >= self.max_groups:
                self.counters["full"] += 1
                return
            members = self.groups[group] = {}
        if source not in members:
            if source.__class__ is not int and self.joined[source] >= self.port_max:
                self.counters["port_full"] += 1
                self.all_ports.add(source)  # it gets everything: never misses its groups
                if not members:
                    del self.groups[group]
                return
            self.joined[source] += 1
            self.counters["joins"] += 1
        members[source] = now + self.timeout

    def _leave(self, group: bytes, source: Member, ok: Any) -> None:
        if not ok(group):
            return
        if source.__class__ is int:
            self.counters["peer_leave"] += 1  # other hosts behind that node may still listen
            return
        members = self.groups.get(bytes(group))
        if members is not None and source in members:
            self.counters["leaves"] += 1
            self._drop(bytes(group), members, source)

    def _drop(self, group: bytes, members: dict[Member, float], member: Member) -> None:
        del members[member]
        left = self.joined[member] - 1
        if left > 0:
            self.joined[member] = left
        else:
            del self.joined[member]
        if not members:
            del self.groups[group]

    def forget(self, member: Member) -> None:
        """A port went away (or a peer left): drop all its memberships at once."""
        self.all_ports.discard(member)
        if member not in self.joined:
            return
        for group, members in list(self.groups.items()):
            if member in members:
                self._drop(group, members, member)

    def age(self, now: float) -> int:
        """Drop memberships past their time (swept every :data:`SWEEP` s); returns how many."""
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + SWEEP
        gone = [
            (group, member)
            for group, members in self.groups.items()
            for member, until in members.items()
            if until < now
        ]
        for group, member in gone:
            self._drop(group, self.groups[group], member)
        self.counters["expired"] += len(gone)
        return len(gone)

    def status(self) -> dict[str, int]:
        """Size, bounds and counters (for status and /metrics)."""
        return {
            "groups": len(self.groups),
            "max": self.max_groups,
            "port_max": self.port_max,
            "timeout": int(self.timeout),
            **self.counters,
        }


def format_group(group: bytes) -> str:
    """A group address as text (4 bytes: IPv4, 16: IPv6)."""
    from ipaddress import ip_address

    return str(ip_address(group))
