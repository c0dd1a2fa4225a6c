"""The one-line JSON result every benchmark prints last."""

import json


def print_result(metric: str, value: float, reference: float, unit: str) -> None:
    print(json.dumps({"metric": metric, "value": round(value, 4), "reference": round(reference, 4),
                      "ratio": round(value / reference, 3), "unit": unit}))
