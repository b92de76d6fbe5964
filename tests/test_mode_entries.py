"""The mode cache's entries against a model: bounded exactly, the least recently used out
first, each kind on its own, every answer the last value put."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.core.tenants import Mode
from edge.modes.entries import MISSING, Entries

TENANTS = [f"t{n}" for n in range(12)]
VALUES = [*Mode, None]

get = st.tuples(st.just("get"), st.sampled_from(TENANTS))
put = st.tuples(st.just("put"), st.sampled_from(TENANTS), st.sampled_from(VALUES))
operations = st.lists(
    st.one_of(  # mostly uses, so that the cache fills and ages
        get,
        get,
        get,
        put,
        put,
        st.tuples(st.just("put_absent"), st.sampled_from(TENANTS), st.integers(0, 5)),
        st.tuples(st.just("discard"), st.sampled_from(TENANTS)),
        st.tuples(st.just("expire"), st.integers(0, 5)),
    ),
    min_size=20,
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(operations, st.integers(1, 8), st.integers(1, 8))
def test_entries_keep_a_suffix_of_each_kinds_use_order(
    ops: list[tuple[object, ...]], present_size: int, absent_size: int
) -> None:
    entries = Entries(present_size, absent_size)
    young = entries.young  # what the request path holds on to
    value: dict[str, Mode | None] = {}  # the model: every tenant's last value put
    expiry: dict[str, int] = {}
    used: dict[bool, list[str]] = {False: [], True: []}  # per kind (absent?), oldest first

    def use(tenant: str) -> None:
        kind = used[tenant in expiry]
        if tenant in kind:
            kind.remove(tenant)
        kind.append(tenant)

    def forget(tenant: str) -> None:
        for kind in used.values():
            if tenant in kind:
                kind.remove(tenant)
        value.pop(tenant, None)
        expiry.pop(tenant, None)

    for op in ops:
        name, *args = op
        if name == "get":
            tenant = str(args[0])
            got = entries.get(tenant)
            if got is not MISSING:
                assert got is value[tenant]
                use(tenant)
        elif name == "put":
            tenant, mode = str(args[0]), args[1]
            assert mode is None or isinstance(mode, Mode)
            forget(tenant)
            entries.put(tenant, mode)
            value[tenant] = mode
            use(tenant)
        elif name == "put_absent":
            tenant, expires = str(args[0]), int(str(args[1]))
            forget(tenant)
            entries.put_absent(tenant, expires)
            value[tenant], expiry[tenant] = Mode.LEGACY, expires
            use(tenant)
        elif name == "discard":
            forget(str(args[0]))
            entries.discard(str(args[0]))
        else:
            now = int(str(args[0]))
            for tenant in entries.expire(now):
                assert expiry[tenant] <= now
                forget(tenant)

        for absent, size in ((False, present_size), (True, absent_size)):
            order = used[absent]
            kept = [t for t in order if entries.peek(t) is not MISSING]
            # The bound is filled, never passed, and the last half of it used always stays:
            # what goes is less recently used than those.
            assert len(kept) == min(size, len(order))
            assert set(order[-max(1, size // 2) :]) <= set(kept)
            for tenant in set(order) - set(kept):
                forget(tenant)
        assert entries.young is young
        assert +entries.modes == Counter(value[t] for t in used[False])
        assert entries.present == len(used[False])
        assert entries.absent == len(used[True])
        assert len(entries) == len(value)
        assert sorted(entries.present_tenants()) == sorted(used[False])
