"""Design families, shared by chairs and app screens: a design is a flat dict drawn group by group
(`groups`: name -> sampler(rng) returning that group's keys); a family is a base design plus
siblings that re-sample one or two shape groups (or single keys of them), so a test gallery
holds near-duplicates and retrieval is fine-grained."""


def sample_design(rng, groups):
    """A design: every group's sampler in turn, their keys merged."""
    d = {}
    for g in groups:
        d.update(groups[g](rng))
    return d


def mutate_design(rng, base, groups, shape_groups, signature, taken):
    """A sibling of `base`: one or two shape groups, or single keys of them, re-sampled, and a
    new colour half of the time; retried until its shape differs from every signature in
    `taken` (the family so far), so no two gallery items look the same in a sketch."""
    for _ in range(50):
        d = dict(base)
        for g in rng.choice(shape_groups, size=int(rng.integers(1, 3)), replace=False):
            new = groups[g](rng)
            if rng.random() < 0.5:   # a fine change: one key of the group
                key = list(new)[int(rng.integers(len(new)))]
                new = {key: new[key]}
            d.update(new)
        if 'material' in groups and rng.random() < 0.5:   # chairs: a new colour
            d.update(groups['material'](rng))
        sig = signature(d)
        if sig not in taken:
            taken.add(sig)
            return d
    raise RuntimeError('could not find a distinct sibling design')


def families(rng, n, groups, shape_groups, signature):
    """n (family id, design) in families of 2-5: a base and its siblings (consecutive)."""
    out = []
    while len(out) < n:
        base = sample_design(rng, groups)
        taken = {signature(base)}
        fam = [base] + [mutate_design(rng, base, groups, shape_groups, signature, taken)
                        for _ in range(int(rng.integers(1, 5)))]
        out += [(len({f for f, _ in out}), d) for d in fam]
    return out[:n]
