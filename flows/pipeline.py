"""The whole way from raw data to a promoted champion: prepare → train (pretrain cached → fine-tune → register).

It holds the data lock (:func:`ukr_hw.ops.locks.data_lock`) across both subflows, so no retrain slips in between
the data it prepares and the model it trains on them (the lock is re-entrant: the subflows take it again)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.prepare import prepare
from flows.train import train
from ukr_hw.ops.locks import data_lock
from ukr_hw.settings import get_settings


@flow(name="pipeline", log_prints=True)
def pipeline(config_path: Path = Path("configs/train.yaml")) -> dict[str, Any]:
    with data_lock(get_settings(), "pipeline"):
        data = prepare()
        result = train(config_path=config_path)
    return {"prepare": data, "train": result}


if __name__ == "__main__":
    print(pipeline())
