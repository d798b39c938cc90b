"""Loss weighting: the paper's rebalancing, AMLR, uncertainty weighting and fixed weights.

Every weighter is an ``nn.Module`` with one interface (see :mod:`mlrb.weighting.base`)::

    total = weighter(losses)        # (B, n) or (n,) -> scalar overall loss
    weighter.end_period(epoch=e)    # or automatic: steps_per_period= / steps_per_epoch=
    weighter.weights, weighter.contributions, weighter.log_dict(), weighter.state_dict()
"""
from mlrb.weighting.amlr import AMLRRebalancer
from mlrb.weighting.fixed import FixedWeights
from mlrb.weighting.rebalance import MultiLossRebalancer, paper_lambda_schedule
from mlrb.weighting.uncertainty import UncertaintyWeighting

__all__ = [
    "MultiLossRebalancer",
    "AMLRRebalancer",
    "UncertaintyWeighting",
    "FixedWeights",
    "paper_lambda_schedule",
]
