"""The dashboard's time series: gauges as read, counters as rates, bounded, aligned."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dlba.history import History

from .admin_support import ReportFixture


class HistoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000.0)
        self.source = ReportFixture()
        self.history = History(length=5)

    def sample(self) -> None:
        now = self.clock.seconds()
        self.history.sample(now, self.source.report(now))

    def test_first_sample_has_gauges_but_no_rate(self) -> None:
        self.sample()
        out = self.history.to_dict()
        self.assertEqual(out["times"], [1000.0])
        self.assertEqual(out["backends"]["3"]["queued"], [2.0])
        self.assertEqual(out["backends"]["3"]["limit"], [8.0])
        self.assertEqual(out["backends"]["1"]["rate"], [None])
        self.assertEqual(out["node"]["open"], [3.0])
        self.assertEqual(out["node"]["rate"], [None])

    def test_rates_come_from_counter_deltas_over_the_clock(self) -> None:
        self.sample()
        self.clock.advance(2.0)
        self.source.add_hits(1, 30)
        self.sample()
        out = self.history.to_dict()
        self.assertEqual(out["backends"]["1"]["rate"], [None, 15.0])
        self.assertEqual(out["backends"]["2"]["rate"], [None, 0.0])
        self.assertEqual(out["node"]["rate"], [None, 15.0])
        # the mean of the interval's answers (2 ms each), not the long average
        self.assertEqual(out["backends"]["1"]["response"], [None, 0.002])
        # no answer in the interval: a gap, not a zero
        self.assertEqual(out["backends"]["2"]["response"], [None, None])

    def test_a_counter_that_restarts_gives_a_gap(self) -> None:
        self.sample()
        self.clock.advance(1.0)
        self.source.data["node"]["hits"] = 3
        self.sample()
        self.clock.advance(1.0)
        self.source.data["node"]["hits"] = 5
        self.sample()
        self.assertEqual(self.history.to_dict()["node"]["rate"], [None, None, 2.0])

    def test_a_clock_that_stands_still_gives_a_gap(self) -> None:
        self.sample()
        self.source.add_hits(1, 5)
        self.sample()
        self.assertEqual(self.history.to_dict()["backends"]["1"]["rate"], [None, None])

    def test_bounded_to_its_length(self) -> None:
        for _ in range(12):
            self.clock.advance(2.0)
            self.source.add_hits(1, 4)
            self.sample()
        out = self.history.to_dict()
        self.assertEqual(len(out["times"]), 5)
        self.assertEqual(out["times"][-1], 1024.0)
        self.assertEqual(out["backends"]["1"]["rate"], [2.0] * 5)
        for series in out["backends"]["1"].values():
            self.assertEqual(len(series), 5)

    def test_a_late_entity_is_padded_to_the_shared_times(self) -> None:
        self.sample()
        self.clock.advance(1.0)
        self.sample()
        self.source.data["backends"].append(dict(self.source.data["backends"][0], number=9))
        self.clock.advance(1.0)
        self.sample()
        out = self.history.to_dict()
        self.assertEqual(out["backends"]["9"]["open"], [None, None, 0.0])
        self.assertEqual(len(out["times"]), 3)

    def test_a_late_entity_in_a_full_window_stays_aligned(self) -> None:
        for _ in range(6):
            self.clock.advance(1.0)
            self.sample()
        self.source.data["pools"].append(dict(self.source.data["pools"][0], name="late"))
        self.clock.advance(1.0)
        self.sample()
        out = self.history.to_dict()
        self.assertEqual(out["pools"]["late"]["queued"], [None, None, None, None, 2.0])

    def test_a_gone_entity_fades_out_then_is_dropped(self) -> None:
        self.sample()
        del self.source.data["backends"][3]
        for _ in range(4):
            self.clock.advance(1.0)
            self.sample()
        fading = self.history.to_dict()["backends"]["4"]["open"]
        self.assertEqual(fading, [3.0, None, None, None, None])
        self.clock.advance(1.0)
        self.sample()
        self.assertNotIn("4", self.history.to_dict()["backends"])

    def test_pools_sessions_and_array_nodes(self) -> None:
        self.sample()
        self.clock.advance(4.0)
        self.source.data["pools"][0]["refused_requests"] += 8
        self.source.data["array"]["nodes"][1]["hits"] += 40
        self.sample()
        out = self.history.to_dict()
        self.assertEqual(out["pools"]["demo"]["refused_rate"], [None, 2.0])
        self.assertEqual(out["pools"]["demo"]["oldest_wait"], [0.25, 0.25])
        self.assertEqual(out["sessions"]["static"]["size"], [3.0, 3.0])
        self.assertEqual(out["nodes"]["2"]["rate"], [None, 10.0])
        self.assertEqual(out["nodes"]["2"]["buckets"], [2093.0, 2093.0])

    def test_odd_values_are_gaps_not_errors(self) -> None:
        self.source.data["node"]["avg_response_time"] = float("nan")
        self.source.data["backends"][0]["queued"] = None
        self.source.data["backends"][1]["response_histogram"] = None
        self.source.data["array"] = None
        self.sample()
        self.clock.advance(1.0)
        self.sample()
        out = self.history.to_dict()
        self.assertEqual(out["node"]["response"], [None, None])
        self.assertEqual(out["backends"]["1"]["queued"], [None, None])
        self.assertEqual(out["backends"]["2"]["response"], [None, None])
        self.assertEqual(out["nodes"], {})

    def test_too_short_a_history_is_refused(self) -> None:
        self.assertRaises(ValueError, History, 1)
