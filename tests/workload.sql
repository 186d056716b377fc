-- A deterministic SQL workload for tests/preload.sh postgres: sorts in memory
-- and on disk, hash joins and aggregates with large work_mem (big mallocs),
-- an index build, JSON, regular expressions, recursion, window functions.
\set ON_ERROR_STOP on
SET max_parallel_workers_per_gather = 2;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
CREATE TABLE t AS
  SELECT i, md5(i::text) AS h, repeat(chr(65 + i % 26), 1 + i % 300) AS pad
  FROM generate_series(1, 200000) AS i;
CREATE INDEX t_h ON t (h);
ANALYZE t;
SET work_mem = '1MB';
SELECT h, i FROM t ORDER BY h DESC OFFSET 100000 LIMIT 5;
SET work_mem = '256MB';
SELECT i % 97 AS k, count(*), sum(length(pad)), min(h), max(h)
  FROM t GROUP BY k ORDER BY k LIMIT 10;
SELECT count(*), sum(a.i::bigint * b.i)
  FROM t a JOIN t b ON a.h = md5((b.i + 1)::text);
SELECT h FROM t WHERE h BETWEEN 'a0' AND 'a1' ORDER BY h LIMIT 5;
SELECT jsonb_pretty(jsonb_build_object('n', count(*), 'keys', jsonb_agg(DISTINCT i % 7)))
  FROM t;
SELECT string_agg(substr(h, 1, 4), ',' ORDER BY i)
  FROM t WHERE h ~ '^(ab|cd)[0-9]+f' AND i < 20000;
WITH RECURSIVE fib(n, a, b) AS (
  SELECT 1, 0::numeric, 1::numeric
  UNION ALL SELECT n + 1, b, a + b FROM fib WHERE n < 300)
SELECT n, b FROM fib WHERE n % 50 = 0 ORDER BY n;
SELECT i, h, rank() OVER (PARTITION BY i % 5 ORDER BY h), lag(h) OVER (ORDER BY i)
  FROM t WHERE i % 20000 = 0 ORDER BY i;
SELECT count(DISTINCT pad), sum(array_length(regexp_split_to_array(h, '[0-9]'), 1))
  FROM t;
UPDATE t SET pad = upper(h) || pad WHERE i % 3 = 0;
DELETE FROM t WHERE i % 7 = 0;
VACUUM t;
SELECT count(*), sum(length(pad)), md5(string_agg(h, '' ORDER BY h)) FROM t;
