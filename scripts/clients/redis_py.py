"""oncelog serve driven by redis-py, in RESP2 and RESP3: SET NX with EX and PX, GET, TTL,
a non-transactional pipeline, and a transactional one (refused whole: nothing written).
Exits 1 on an unexpected reply.

    pip install redis
    python3 scripts/clients/redis_py.py PORT      # against an empty store
"""
import sys

import redis

port = int(sys.argv[1])
for proto in (2, 3):
    r = redis.Redis(port=port, protocol=proto)
    k = f"py{proto}:1"
    got = [r.set(k, "v", nx=True, ex=3600), r.set(k, "v", nx=True, ex=3600), r.get(k), r.ttl(k)]
    assert got == [True, None, b"v", 3600], got
    p = r.pipeline(transaction=False)
    for i in range(20):
        p.set(f"py{proto}:p{i % 10}", "v", nx=True, px=60000)
    assert sum(1 for x in p.execute() if x) == 10
    try:
        r.pipeline().set(f"py{proto}:tx", "v", nx=True, ex=10).execute()
        raise SystemExit("a MULTI/EXEC pipeline was not refused")
    except redis.ResponseError:
        pass
    assert r.get(f"py{proto}:tx") is None
    print(f"RESP{proto}: ok")
