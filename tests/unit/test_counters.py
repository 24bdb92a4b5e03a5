import threading

import pytest

from dvla.counters import EpisodeLedger


def test_ledger_balances_while_two_threads_move_episodes():
    ledger = EpisodeLedger()
    snapshots, done = [], threading.Event()

    def receiver():
        for _ in range(2000):
            ledger.receive(3)
        done.set()

    def trainer():
        while not (done.is_set() and ledger.queued == 0):
            if ledger.queued >= 3:
                ledger.take(3)
                (ledger.train if ledger.trained <= ledger.dropped else ledger.drop)(3)
            snapshots.append(ledger.snapshot())

    threads = [threading.Thread(target=receiver), threading.Thread(target=trainer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(EpisodeLedger.balanced(s) for s in snapshots)
    final = ledger.snapshot()
    assert final["received"] == 6000 == final["trained"] + final["dropped"]


def test_ledger_refuses_moving_what_is_not_there():
    ledger = EpisodeLedger()
    ledger.receive(2)
    with pytest.raises(AssertionError):
        ledger.take(3)
