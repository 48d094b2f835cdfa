"""IGMP/MLD snooping: multicast goes only to the ports and nodes that joined its group.

Hosts say which groups they listen to with IGMP (IPv4: v1/v2 reports, v2 leaves, v3 reports)
and MLD (IPv6: v1 reports and dones, v2 reports). The switch shows every frame from a local port
or a peer node to :meth:`Multicast.forward` when its destination MAC is an IP multicast one
(01:00:5e… or 33:33…); the table answers where it goes:

* ``None`` — flood it as an unlearned frame: the frame is an IGMP/MLD message itself (they all
  flood, RFC 4541 §2.1.1, so every node learns which nodes have listeners — an IGMPv2 report is
  sent to the group's own address), a link-local group (224.0.0.0/24 and every IPv6 group of
  interface or link scope, ff01::/16 and ff02::/16: all-nodes, all-routers, solicited-node, MLDv2
  routers, mDNS — RFC 4541 §2.1.2 and §3; ND and routing never depend on a report getting
  through), an unregistered group (no member known: hosts that joined before this node started,
  or a group nobody reported), or not IP multicast at all;
* else the members: local ports and peer nodes (sender ids) that reported the group and have not
  left or expired.

Memberships are by group address (not MAC: 32 IPv4 groups share one MAC). Each lasts
:data:`MEMBER_TIMEOUT` seconds (2 × 125 s query interval + 10 s response time, RFC 3376 §8.4)
after its latest report; the gateway queries its local ports every 125 s
(:mod:`atenet.router.querier`), so a host that still listens reports again before then, and one
that left without a word is dropped. A leave (IGMPv2 leave, IGMPv3/MLDv2 "to include nothing",
MLDv1 done) from a local port removes that port at once — a port is one host (or a small bridge
whose other listeners re-report on the next query). A leave seen from a peer node removes
nothing: other hosts behind that node may still listen, and only that node can tell; its entry
just expires if none reports again.

Bounds: :data:`MAX_GROUPS` groups per network and :data:`MAX_MEMBER_GROUPS` per member; past
them a report is not recorded (counted), never an eviction of someone else's membership. Past
the group bound the new group stays unregistered and floods. Past its own bound, a member (port
or peer node) could have joined a group someone else registered, which would then skip it: so
it is put in :attr:`Multicast.everything` and gets every registered group's frames instead —
more than it asked for, never less.

Sans-I/O: the table has no clock; callers pass ``now``. Parsing never raises: malformed reports
are counted (``bad``) and the frame floods like any other.
"""

from __future__ import annotations

from collections import Counter
from ipaddress import ip_address
from typing import Any

__all__ = ["MAX_GROUPS", "MAX_MEMBER_GROUPS", "MEMBER_TIMEOUT", "Multicast", "group_text"]

MEMBER_TIMEOUT = 260.0
"""Seconds a membership lasts after its latest report (RFC 3376's group membership interval)."""

MAX_GROUPS = 1024
"""Groups one network's table holds on one node."""

MAX_MEMBER_GROUPS = 256
"""Groups one port or peer node may hold in the table."""

MAX_ROUTERS = 16
"""Local ports remembered as multicast routers (they sent a query); more are not recorded."""

REPORT: dict[Any, float] = {}
"""What :meth:`Multicast.forward` returns for a membership report or leave: it goes to the peer
nodes (they learn from it), mirror ports and multicast-router ports — never to other hosts, whose
IGMPv2/MLDv1 stacks would suppress their own report on hearing it (RFC 4541 §2.1.1) and go
unregistered. (An identity sentinel: never modified.)"""

_IGMP = 2
_ICMPV6 = 58
_EXTENSIONS = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options

# IGMPv3 / MLDv2 group record types (RFC 3376 §4.2.12, RFC 3810 §5.2.12).
_IS_IN, _IS_EX, _TO_IN, _TO_EX, _ALLOW, _BLOCK = 1, 2, 3, 4, 5, 6


def group_text(group: bytes) -> str:
    """A group address (4 or 16 bytes) as text."""
    return str(ip_address(group))


def _link_local(group: bytes) -> bool:
    """Groups that always flood: 224.0.0.0/24, and IPv6 interface- or link-scope groups."""
    if len(group) == 4:
        return group[0] == 224 and group[1] == 0 and group[2] == 0
    return group[1] & 0x0F <= 2


def _multicast(group: bytes) -> bool:
    return (group[0] & 0xF0 == 0xE0) if len(group) == 4 else group[0] == 0xFF


class Multicast:
    """One network's group memberships on one node (see the module doc)."""

    __slots__ = (
        "counters",
        "everything",
        "groups",
        "max_groups",
        "max_member_groups",
        "per_member",
        "routers",
        "timeout",
    )

    def __init__(
        self,
        timeout: float = MEMBER_TIMEOUT,
        max_groups: int = MAX_GROUPS,
        max_member_groups: int = MAX_MEMBER_GROUPS,
    ) -> None:
        self.timeout = timeout
        self.max_groups = max_groups
        self.max_member_groups = max_member_groups
        self.groups: dict[bytes, dict[Any, float]] = {}
        """Group address → {member (local port or peer sender id): expiry time}."""
        self.per_member: Counter[Any] = Counter()
        """Groups each member holds (for the per-member bound)."""
        self.everything: set[Any] = set()
        self.routers: dict[Any, float] = {}
        """Local ports that sent a query (multicast routers) → until when: they get reports."""
        """Members past :attr:`max_member_groups`: a join they make is not recorded, so they
        get every registered group's frames instead (:meth:`Switch._to_members`) — never less
        than they asked for — until their memberships are gone."""
        self.counters: Counter[str] = Counter()
        """``reports``, ``joins``, ``leaves``, ``expired``, ``bad``, ``groups_full``,
        ``member_full``, ``to_members`` (frames sent only to members), ``flooded_unregistered``."""

    # --- the switch's question ----------------------------------------------------------------

    def forward(self, frame: bytes, at: int, source: Any, now: float) -> dict[Any, float] | None:
        """Where the frame at ``frame[at:]`` goes: None = flood, else its group's members (a
        dict, member → expiry; do not modify). IGMP/MLD messages are also learned from here."""
        mac0 = frame[at : at + 2]
        if mac0 == b"\x01\x00":
            if frame[at + 2] != 0x5E or frame[at + 12 : at + 14] != b"\x08\x00":
                return None
            ip = at + 14
            if len(frame) < ip + 20:
                return None
            group = frame[ip + 16 : ip + 20]
            if frame[ip + 9] == _IGMP:
                return REPORT if self._igmp(frame, ip, source, now) == "member" else None
        elif mac0 == b"\x33\x33":
            if frame[at + 12 : at + 14] != b"\x86\xdd":
                return None
            ip = at + 14
            if len(frame) < ip + 40:
                return None
            group = frame[ip + 24 : ip + 40]
            kind = self._mld(frame, ip, source, now)
            if kind:
                return REPORT if kind == "member" else None
        else:
            return None
        if _link_local(group):
            return None
        members = self.groups.get(group)
        if members is None:
            self.counters["flooded_unregistered"] += 1
            return None
        for until in members.values():
            if until > now:
                self.counters["to_members"] += 1
                return members  # one live member: the caller filters the rest by expiry
        self._drop_group(group)
        self.counters["flooded_unregistered"] += 1
        return None

    # --- learning -------------------------------------------------------------------------------

    def _router(self, source: Any, now: float) -> None:
        """A local port that sent a query is a multicast router: it gets the reports."""
        local = source is not None and not isinstance(source, int)
        if local and (source in self.routers or len(self.routers) < MAX_ROUTERS):
            self.routers[source] = now + self.timeout

    def router_ports(self, now: float) -> list[Any]:
        """Local ports that sent a query within the membership timeout (multicast routers)."""
        return [p for p, until in self.routers.items() if until > now]

    def join(self, group: bytes, member: Any, now: float) -> None:
        if not _multicast(group):
            self.counters["bad"] += 1
            return
        if _link_local(group):
            return  # always flooded: nothing to remember
        members = self.groups.get(group)
        if members is None:
            if len(self.groups) >= self.max_groups:
                self.counters["groups_full"] += 1
                return
            members = self.groups[group] = {}
        if member not in members:
            if self.per_member[member] >= self.max_member_groups:
                self.counters["member_full"] += 1
                self.everything.add(member)
                if not members:
                    del self.groups[group]
                return
            self.per_member[member] += 1
            self.counters["joins"] += 1
        members[member] = now + self.timeout

    def leave(self, group: bytes, member: Any) -> None:
        """A leave: a local port's membership ends at once; a peer's is left to expire."""
        self.counters["leaves"] += 1
        if isinstance(member, int):
            return
        members = self.groups.get(group)
        if members is not None and members.pop(member, None) is not None:
            self._uncount(member)
            if not members:
                del self.groups[group]

    def forget(self, member: Any) -> None:
        """A port closed (or a peer left the network): drop its memberships."""
        self.everything.discard(member)
        self.routers.pop(member, None)
        if not self.per_member.get(member):
            return
        for group in [g for g, m in self.groups.items() if member in m]:
            members = self.groups[group]
            del members[member]
            if not members:
                del self.groups[group]
        del self.per_member[member]

    def expire(self, now: float) -> None:
        """Drop memberships past their time (call about once a second)."""
        for port in [p for p, until in self.routers.items() if until <= now]:
            del self.routers[port]
        for group in list(self.groups):
            members = self.groups[group]
            for member in [m for m, until in members.items() if until <= now]:
                del members[member]
                self._uncount(member)
                self.counters["expired"] += 1
            if not members:
                del self.groups[group]

    def _drop_group(self, group: bytes) -> None:
        for member in self.groups.pop(group, {}):
            self._uncount(member)
            self.counters["expired"] += 1

    def _uncount(self, member: Any) -> None:
        left = self.per_member[member] - 1
        if left > 0:
            self.per_member[member] = left
        else:
            self.per_member.pop(member, None)
            self.everything.discard(member)

    # --- parsing --------------------------------------------------------------------------------

    def _igmp(self, frame: bytes, ip: int, source: Any, now: float) -> str:
        """Learn from an IGMP message: "member" (a report or leave), "query" or "" (other)."""
        ihl = (frame[ip] & 0x0F) * 4
        total = int.from_bytes(frame[ip + 2 : ip + 4], "big")
        end = min(len(frame), ip + total)
        g = ip + ihl
        if ihl < 20 or end < g + 8:
            self.counters["bad"] += 1
            return ""
        kind = frame[g]
        if kind in (0x12, 0x16):  # v1 / v2 membership report
            self.counters["reports"] += 1
            self.join(frame[g + 4 : g + 8], source, now)
        elif kind == 0x17:  # v2 leave group
            self.leave(frame[g + 4 : g + 8], source)
        elif kind == 0x22:  # v3 membership report
            self.counters["reports"] += 1
            self._records(frame, g + 8, end, int.from_bytes(frame[g + 6 : g + 8], "big"), 4,
                          source, now)  # fmt: skip
        elif kind == 0x11:
            self._router(source, now)
            return "query"
        else:
            return ""
        return "member"

    def _mld(self, frame: bytes, ip: int, source: Any, now: float) -> str:
        """Learn from an MLD message: "member" (a report or done), "query", or "" (not MLD)."""
        nh = frame[ip + 6]
        off = ip + 40
        end = min(len(frame), off + int.from_bytes(frame[ip + 4 : ip + 6], "big"))
        while nh in _EXTENSIONS:
            if off + 8 > end:
                return ""
            nh, off = frame[off], off + (frame[off + 1] + 1) * 8
        if nh != _ICMPV6 or off + 4 > end:
            return ""
        kind = frame[off]
        if kind in (131, 132):  # MLDv1 report / done
            if off + 24 > end:
                self.counters["bad"] += 1
                return "query"  # malformed: flooded like any frame
            group = frame[off + 8 : off + 24]
            if kind == 131:
                self.counters["reports"] += 1
                self.join(group, source, now)
            else:
                self.leave(group, source)
            return "member"
        if kind == 143:  # MLDv2 report
            if off + 8 > end:
                self.counters["bad"] += 1
                return "query"  # malformed: flooded like any frame
            self.counters["reports"] += 1
            count = int.from_bytes(frame[off + 6 : off + 8], "big")
            self._records(frame, off + 8, end, count, 16, source, now)
            return "member"
        if kind == 130:
            self._router(source, now)
            return "query"
        return ""

    def _records(
        self, frame: bytes, at: int, end: int, count: int, size: int, source: Any, now: float
    ) -> None:
        """IGMPv3 / MLDv2 group records: joins and leaves by group (sources are not tracked:
        a host that asks for some sources of a group gets the whole group)."""
        for _ in range(count):
            if at + 4 + size > end:
                self.counters["bad"] += 1
                return
            kind, aux, sources = (
                frame[at],
                frame[at + 1],
                int.from_bytes(frame[at + 2 : at + 4], "big"),
            )
            group = frame[at + 4 : at + 4 + size]
            at += 4 + size + sources * size + aux * 4
            if at > end:
                self.counters["bad"] += 1
                return
            if kind in (_IS_EX, _TO_EX) or (kind in (_IS_IN, _TO_IN, _ALLOW) and sources):
                self.join(group, source, now)
            elif kind in (_IS_IN, _TO_IN) and not sources:
                self.leave(group, source)
            elif kind not in (_ALLOW, _BLOCK):
                self.counters["bad"] += 1

    # --- visibility -------------------------------------------------------------------------------

    def view(self, now: float, name: Any = str) -> list[dict[str, Any]]:
        """The live table for status / `tok fdb`: group, members (named by ``name(member)``)."""
        out = []
        for group, members in sorted(self.groups.items()):
            live = [(m, until) for m, until in members.items() if until > now]
            if live:
                out.append(
                    {
                        "group": group_text(group),
                        "members": sorted(
                            ({"member": name(m), "expires": round(u - now, 1)} for m, u in live),
                            key=lambda d: str(d["member"]),
                        ),
                    }
                )
        return out
