"""Who is the scheduler (DESIGN.md §7): a state machine, no sockets, no clock.

The glue (an AMP service) only does I/O: it calls `Election.tick` every ``ping_interval``
(more often is harmless), sends what the returned actions say, feeds back what peers say,
and answers every ping or "who is scheduler?" with this node's ``(scheduler, term)`` as they
are after the event.  Every method that takes an event returns the actions it caused.

The rules:

- Every node pings every peer each round (``ping_interval``), the scheduler too, and a ping
  carries the sender's view, so each node knows who is live and every view spreads within
  a round.  A peer is *live* once heard from (any ping, answer or pong) and until it misses
  ``ping_misses`` pings in a row.  A ping still unanswered at the next round is missed;
  `ping_missed` says so sooner (refused, timed out).
- Terms only grow.  A node that hears a higher term adopts it with the scheduler it names,
  so a scheduler that hears a higher term stands down at once.  Hearsay of a newer claim
  counts as hearing from the claimant (which then has ``ping_misses`` rounds to answer):
  right after a partition heals, the old scheduler follows the new one at once instead of
  claiming again.  A claim of a lower term is ignored: its sender hears ours and stands
  down.  Hearsay of a claim of the current term is believed only if the claimant is live
  here: a peer that has not noticed yet must not revive a scheduler we counted dead.
- Terms are unique to their node: node ``order[i]`` claims only terms ``t ≡ i (mod
  len(order))``, the smallest such above every term it has seen.  So two nodes can never be
  scheduler of the same term, whatever their views, and a higher term always settles who
  wins.  (Two claims of one term can only come from nodes with different ``order``s, a
  config push half done; then the node earlier in this node's order wins.)
- When the scheduler is not live (or stood down), the first live, eligible node in
  ``[[array.node]]`` order claims the next term; the others wait for its claim.  A running
  scheduler is never pre-empted by a node earlier in the order that comes back: a takeover
  costs the array its in-flight frames, so it happens only when needed.
- Nodes may join a running array (`Election.add_nodes`, on a config push that appends
  ``[[array.node]]`` entries): they go at the end of the order, so no member's rank and no
  claimed term's owner changes, and a newcomer is not live until heard from.  Terms claimed
  before and after the order grew can share a number only across a push half done, and the
  tie-break above settles those.  Removing or reordering nodes is not done at run time.
- A starting node asks its peers (`AskScheduler`) and claims nothing for a start-up grace
  (``ping_interval * ping_misses`` unless given): the highest term it hears wins.  If no
  live scheduler turns up, the first live node in order claims with a term above all seen.
- An ineligible node (disabled) never claims; a scheduler that becomes ineligible stands
  down, and the next in order takes over once it hears so (within a round).
- Stale news about ourselves is not a claim: a term naming this node that this process did
  not claim (it restarted) makes it an electing node of that term.

Bounds (all messages between live nodes arriving within a round; tests/test_election.py):
- A scheduler that dies at ``D`` (its peers connected and past their start-up grace, no
  other node failing meanwhile) is replaced by ``D + (ping_misses + 1) * ping_interval`` at
  the latest: the first ping it leaves unanswered goes out by ``D + ping_interval``, and
  ``ping_misses`` rounds later the first live eligible node counts it dead and claims in
  the same step.  The bound is tight (a node whose round falls just after ``D``).
- While the live nodes are connected, two nodes are never scheduler at once for longer than
  one ``ping_interval``: within a round each pings the other, and the lower term stands
  down on hearing the higher.  (In a partition each side may have its own scheduler; a
  node cut off from all its peers elects itself, and when it returns its term is the
  newer, so it takes over: there is no quorum, since an array of two could never fail over.)
- After the last change (a failure, a restart, a partition healing), every live node
  agrees on one scheduler within ``(ping_misses + 3) * ping_interval``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Action",
    "AskScheduler",
    "BecomeScheduler",
    "Election",
    "Follow",
    "Ping",
    "Role",
    "StandDown",
]

Role = Literal["scheduler", "node", "electing"]


@dataclass(frozen=True)
class Ping:
    """Ping ``node``, telling it this node's view; its pong goes to `Election.pong`."""

    node: int
    scheduler: int | None
    term: int


@dataclass(frozen=True)
class AskScheduler:
    """Ask each of ``nodes`` who is scheduler; answers go to `Election.peer_says`."""

    nodes: tuple[int, ...]


@dataclass(frozen=True)
class BecomeScheduler:
    """This node is now the scheduler of ``term``: announce the VIP, start forwarding."""

    term: int


@dataclass(frozen=True)
class StandDown:
    """This node is no longer scheduler: stop forwarding and answering ARP for the VIP."""

    new_scheduler: int | None  # None: not known yet
    term: int


@dataclass(frozen=True)
class Follow:
    """``scheduler`` (another node) is scheduler of ``term``: sync the client table with it."""

    scheduler: int
    term: int


Action = Ping | AskScheduler | BecomeScheduler | StandDown | Follow


class Election:
    """One node's view: the highest term it has seen, who holds it, and who is live."""

    def __init__(
        self,
        own: int,
        order: Iterable[int],
        *,
        ping_interval: float,
        ping_misses: int,
        eligible: Callable[[int], bool] | Collection[int] | None = None,
        grace: float | None = None,
        past_term: int = 0,
    ) -> None:
        self.order = tuple(order)
        self._rank = {n: i for i, n in enumerate(self.order)}
        if len(self._rank) != len(self.order):
            raise ValueError(f"a node twice in the order {self.order}")
        if own not in self._rank:
            raise ValueError(f"node {own} is not in the order {self.order}")
        if ping_interval <= 0 or ping_misses < 1:
            raise ValueError("ping_interval must be > 0 and ping_misses at least 1")
        self.own = own
        self.peers = tuple(n for n in self.order if n != own)
        self.ping_interval = ping_interval
        self.ping_misses = ping_misses
        self.grace = ping_interval * ping_misses if grace is None else grace
        if eligible is None:
            self._eligible: Callable[[int], bool] = lambda n: True
        elif callable(eligible):
            self._eligible = eligible
        else:
            self._eligible = frozenset(eligible).__contains__
        self._term = 0  # the highest term heard or claimed by this process
        # A term this node used before it restarted (kept on disk, if the glue keeps it):
        # its own claims go above it, but it is no claim, so a live scheduler of a lower
        # term (elected while this node was down) is still followed.
        self._past_term = past_term
        self._scheduler: int | None = None
        self._heard: set[int] = set()  # peers heard from since this process started
        self._misses = dict.fromkeys(self.peers, 0)  # missed pings in a row
        self._outstanding: set[int] = set()  # pinged this round, neither heard nor missed
        self._next_round: float | None = None  # None: not started
        self._grace_end = 0.0

    # -- the view -------------------------------------------------------------------------

    @property
    def role(self) -> Role:
        if self._scheduler == self.own:
            return "scheduler"
        return "electing" if self._scheduler is None else "node"

    @property
    def scheduler(self) -> int | None:
        return self._scheduler

    @property
    def term(self) -> int:
        return self._term

    def live(self, node: int) -> bool:
        if node == self.own:
            return True
        return node in self._heard and self._misses.get(node, 0) < self.ping_misses

    def live_nodes(self) -> list[int]:
        return [n for n in self.order if self.live(n)]

    # -- membership -------------------------------------------------------------------------

    def add_nodes(self, order: Iterable[int]) -> tuple[int, ...]:
        """Take a new order that is the current one with nodes appended; returns the nodes
        added.  ``ValueError`` (nothing changed) for anything else: a node removed, moved
        or listed twice cannot be taken by a running election."""
        new = tuple(order)
        if new[: len(self.order)] != self.order:
            raise ValueError(
                f"the order {new} does not start with the running one {self.order}: "
                "only nodes appended can join at run time"
            )
        added = new[len(self.order) :]
        if len(set(new)) != len(new):
            raise ValueError(f"a node twice in the order {new}")
        for node in added:
            self._rank[node] = len(self._rank)
            self._misses[node] = 0
        self.order = new
        self.peers = tuple(n for n in self.order if n != self.own)
        return added

    # -- inputs ---------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """Time passes: start, count the round's misses, elect if needed, ping everyone."""
        out: list[Action] = []
        if self._next_round is None:
            self._next_round = now
            self._grace_end = now + self.grace
            if self.peers:
                out.append(AskScheduler(self.peers))
        # A tick a little early still starts the round: timers and float sums jitter.
        due = now >= self._next_round - self.ping_interval / 64
        if due:
            for peer in self._outstanding:
                self._misses[peer] += 1
            self._outstanding = set(self.peers)
        out += self._decide(now)
        if due:
            # Pings go after deciding, so a claim made now travels with them.
            out += [Ping(p, self._scheduler, self._term) for p in self.peers]
            self._next_round += self.ping_interval
            if self._next_round <= now:  # a late tick: no burst of rounds to catch up
                self._next_round = now + self.ping_interval
        return out

    def pong(self, node: int, scheduler: int | None, term: int, now: float) -> list[Action]:
        """``node`` answered our ping with its view."""
        return self._heard_from(node, scheduler, term, now)

    def peer_says(self, node: int, scheduler: int | None, term: int, now: float) -> list[Action]:
        """``node`` answered `AskScheduler`."""
        return self._heard_from(node, scheduler, term, now)

    def pinged_by(self, node: int, scheduler: int | None, term: int, now: float) -> list[Action]:
        """``node`` pinged us with its view (answer it with ours, as it is after this)."""
        return self._heard_from(node, scheduler, term, now)

    def ping_missed(self, node: int, now: float) -> list[Action]:
        """This round's ping to ``node`` failed (refused, timed out): a miss now, not later."""
        if node in self._outstanding:
            self._outstanding.discard(node)
            self._misses[node] += 1
        return self._decide(now)

    # -- inside ---------------------------------------------------------------------------

    def _heard_from(self, peer: int, scheduler: int | None, term: int, now: float) -> list[Action]:
        if peer == self.own or peer not in self._rank:
            return []  # not of this array (a config push half done): no evidence of anything
        self._note_heard(peer)
        if scheduler is not None and scheduler not in self._rank:
            scheduler = None
        out: list[Action] = []
        if term > self._term:
            was_scheduler = self._scheduler == self.own
            self._term = term
            if scheduler == self.own:
                scheduler = None  # a claim this process never made (it restarted since)
            if scheduler is not None:
                # A newer claim is fresh news of its maker: the peer's word counts as hearing
                # from it, which then has a full ping_misses rounds to answer us.  Otherwise
                # (just healed, just started, or our pings to it about to count as missed)
                # we would stand down and claim again at once, over a scheduler everyone
                # else already follows.
                self._note_heard(scheduler)
            self._scheduler = scheduler
            if was_scheduler:
                out.append(StandDown(self._scheduler, term))
            elif self._scheduler is not None:
                out.append(Follow(self._scheduler, term))
        elif term == self._term:
            out += self._same_term(peer, scheduler)
        return out + self._decide(now)

    def _note_heard(self, node: int) -> None:
        self._heard.add(node)
        self._misses[node] = 0
        self._outstanding.discard(node)  # this round's ping is answered

    def _same_term(self, peer: int, claimed: int | None) -> list[Action]:
        current = self._scheduler
        if claimed == current:
            return []
        if claimed is None:
            if peer == current:  # our scheduler says it no longer is: it stood down
                self._scheduler = None
            return []
        # Hearsay of this term's claim is news only if we hear the claimant ourselves: a
        # peer that has not yet noticed must not revive a scheduler we counted dead.  And a
        # claim naming this node is not this process's (it stood down, or restarted).
        if claimed == self.own or not (claimed == peer or self.live(claimed)):
            return []
        if current is not None and self._rank[claimed] > self._rank[current]:
            return []  # two claims of one term: the earlier node in order wins
        self._scheduler = claimed
        if current == self.own:
            return [StandDown(claimed, self._term)]
        return [Follow(claimed, self._term)]

    def _decide(self, now: float) -> list[Action]:
        if self._scheduler == self.own:
            if self._eligible(self.own):
                return []
            self._scheduler = None
            return [StandDown(None, self._term)]
        if self._scheduler is not None:
            if self.live(self._scheduler):
                return []
            self._scheduler = None  # gone: elect
        if self._next_round is None or now < self._grace_end:
            return []  # not started (heard before the first tick), or still asking
        for node in self.order:
            if self._eligible(node) and self.live(node):
                if node != self.own:
                    return []  # its claim will come (it sees what we see)
                self._term = self._next_term()
                self._scheduler = self.own
                return [BecomeScheduler(self._term)]
        return []

    def _next_term(self) -> int:
        """The smallest term above every term seen that belongs to this node."""
        n = len(self.order)
        first = max(self._term, self._past_term) + 1
        return first + (self._rank[self.own] - first) % n
