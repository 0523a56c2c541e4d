"""The record ledger (lmm/train/ledger.py) on its own: what the kill drills read to count records
trained twice or never. The drills (tests/test_kill_drill.py) check it through real kills; these
check its bookkeeping in a second, for `make test-fast`."""
import json
from types import SimpleNamespace

from lmm.train.ledger import RecordLedger


def trainer(tmp_path, epoch=0):
    return SimpleNamespace(current_epoch=epoch, is_global_zero=True, default_root_dir=str(tmp_path))


def test_batches_are_counted_per_epoch_with_the_records_seen_twice(tmp_path):
    ledger = RecordLedger()
    for epoch, batches in ((0, [["a", "b"], ["c", "a"]]), (1, [["b", "c"], ["a"]])):
        for i, ids in enumerate(batches):
            ledger.on_train_batch_end(trainer(tmp_path, epoch), None, None, {"ids": ids}, i)
    summary = ledger.summary()
    assert summary["0"] == {"micro_batches": 2, "records": 4, "unique": 3, "twice": ["a"], "ids": ["a", "b", "c"]}
    assert summary["1"] == {"micro_batches": 2, "records": 3, "unique": 3, "twice": [], "ids": ["a", "b", "c"]}


def test_the_state_a_checkpoint_carries_restores_the_ledger_and_the_file_holds_the_summary(tmp_path):
    ledger = RecordLedger("ledger.json")
    ledger.on_train_batch_end(trainer(tmp_path), None, None, {"ids": [1, 2]}, 0)  # ids are kept as text
    resumed = RecordLedger("ledger.json")
    resumed.load_state_dict(json.loads(json.dumps(ledger.state_dict())))  # as a checkpoint stores it
    resumed.on_train_batch_end(trainer(tmp_path), None, None, {"ids": [2, 3]}, 1)
    resumed.on_fit_end(trainer(tmp_path), None)
    written = json.loads((tmp_path / "ledger.json").read_text())
    assert written == {"0": {"micro_batches": 2, "records": 4, "unique": 3, "twice": ["2"], "ids": ["1", "2", "3"]}}


def test_only_rank_zero_writes(tmp_path):
    ledger = RecordLedger()
    ledger.on_fit_end(SimpleNamespace(is_global_zero=False, default_root_dir=str(tmp_path)), None)
    assert not (tmp_path / "records.json").exists()
