"""The whole way from raw data to a promoted champion: prepare → train (pretrain cached → fine-tune → register)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.prepare import prepare
from flows.train import train


@flow(name="pipeline", log_prints=True)
def pipeline(config_path: Path = Path("configs/train.yaml")) -> dict[str, Any]:
    data = prepare()
    result = train(config_path=config_path)
    return {"prepare": data, "train": result}


if __name__ == "__main__":
    print(pipeline())
