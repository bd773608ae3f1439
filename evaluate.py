"""Attack + defend + measure + report: ``python evaluate.py --defense dip_stitch``.

Not yet: the evaluation harness arrives with the evaluate.py issue. Until then this
script says so and exits with status 2.
"""

import sys

if __name__ == "__main__":
    print(
        "evaluate.py: not yet implemented (the attack suite and evaluation harness come next); "
        "use train.py to train victims for now",
        file=sys.stderr,
    )
    sys.exit(2)
