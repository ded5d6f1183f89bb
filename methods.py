"""The table of methods: every row of the paper's Tables 1-2 that this repository trains, the
class that implements it, and the option defaults that go with it. `--method NAME` picks a row;
`build_model(args)` builds it. Adding a method = a class (model.py's interface) and a row here.
"""
from dataclasses import dataclass, field

from baselines import Siamese
from model import CrossModalHierarchy


@dataclass(frozen=True)
class Method:
    name: str
    cls: type                        # a model.RetrievalModel with from_options(args)
    label: str                       # the paper's row name
    help: str
    defaults: dict = field(default_factory=dict)   # option defaults of this method (over the backbone's)


METHODS = {m.name: m for m in (
    Method('hierarchy', CrossModalHierarchy, 'Proposed',
           'region features, co-attention and hierarchical node fusion, repeated (the paper)'),
    Method('localised_coattn', CrossModalHierarchy, 'B-Localised-Coattn',
           'one co-attention round, max-pool, L2 (= the w/o Hierarchy ablation)'),
    Method('no_coattn', CrossModalHierarchy, 'w/o Localised-Coattn',
           'node fusion without co-attention'),
    Method('siamese', Siamese, 'B-Siamese',
           'whole sketch and photo through one backbone, global pool, L2, fc to --dim, L2',
           dict(dim=64, margin=0.3)),
)}


def build_model(args):
    """The model an options Namespace describes (options.py)."""
    return METHODS[args.method].cls.from_options(args)
