-- dnstap-collector schema, version 1. Applied by `dnstap-collector migrate` (and at start)
-- inside one transaction under an advisory lock; recorded in dnstap.schema_version.
-- Later changes go into new files (002_..., 003_...), never into this one.

CREATE SCHEMA IF NOT EXISTS dnstap;

CREATE TABLE IF NOT EXISTS dnstap.schema_version (
    version    int PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- One row per exchange: a query with its response, a lone query, or a lone response.
-- Range-partitioned on time; the collector creates dnstap.exchange_pYYYYMMDD (or ..HH)
-- partitions ahead of time and on demand. No DEFAULT partition (rows for a missing period
-- fail loudly instead of piling up where retention cannot drop them), and no sequences or
-- triggers, so partitions can later be foreign tables on other servers.
CREATE TABLE IF NOT EXISTS dnstap.exchange (
    time             timestamptz NOT NULL,  -- query time (response time for lone responses)
    response_time    timestamptz,
    identity         text,                  -- dnstap identity (sensor), escaped to valid UTF-8
    kind             text,                  -- client, resolver, auth, forwarder, stub, tool, update
    query_type       text,                  -- dnstap message type of the query: CQ, RQ, AQ, ...
    response_type    text,                  -- ... and of the response: CR, RR, AR, ...
    transport        text,                  -- udp, tcp, dot, doh, doq, dnscrypt-udp, dnscrypt-tcp
    query_address    inet,
    query_port       int,
    response_address inet,
    response_port    int,
    dns_id           int,
    qname            text,                  -- lowercase presentation, no trailing dot
    qtype            text,
    qclass           text,
    opcode           text,
    rcode            text,
    flags            text,                  -- e.g. 'qr aa rd ra'
    has_query        bool NOT NULL,
    has_response     bool NOT NULL,
    latency_us       bigint,                -- response time - query time; negative on clock skew
    query_size       int,
    response_size    int,
    answer_count     int,
    authority_count  int,
    additional_count int,
    answers          jsonb,                 -- [{"name","type","ttl","rdata"}, ...]
    edns_udp_size    int,
    edns_do          bool,
    ecs              text,
    ede_code         int,
    ede_text         text,
    query_zone       text,
    policy           jsonb,                 -- RPZ: {"type","rule","action","match","value"}
    error            text                   -- DNS parse error, NULL when the message parsed
) PARTITION BY RANGE (time);

-- BRIN: rows arrive in time order, so a tiny index serves every time-window scan. Defined on
-- the parent, so each partition gets its own.
CREATE INDEX IF NOT EXISTS exchange_time_brin ON dnstap.exchange USING brin (time);

-- Passive DNS: one row per distinct (rrname, rrtype, rdata) seen in answer sections.
CREATE TABLE IF NOT EXISTS dnstap.pdns (
    rrname      text NOT NULL,              -- lowercase presentation, no trailing dot
    rrtype      text NOT NULL,
    rdata       text NOT NULL,              -- presentation; lone names lowercase, no trailing dot
    rdata_ip    inet,                       -- A / AAAA only
    time_first  timestamptz NOT NULL,
    time_last   timestamptz NOT NULL,
    count       bigint NOT NULL,
    bailiwick   text,
    sensor_id   text,
    -- Reversed name: '*.example.com' becomes a prefix scan on 'moc.elpmaxe.'.
    rrname_rev  text GENERATED ALWAYS AS (reverse(rrname)) STORED,
    CONSTRAINT pdns_rrset_key UNIQUE (rrname, rrtype, rdata)
) WITH (fillfactor = 70);  -- room on each page so upserts (count, time_last) stay HOT updates

CREATE INDEX IF NOT EXISTS pdns_rrname_rev ON dnstap.pdns (rrname_rev text_pattern_ops);
-- GiST inet_ops answers both = and <<= (CIDR containment).
CREATE INDEX IF NOT EXISTS pdns_rdata_ip ON dnstap.pdns USING gist (rdata_ip inet_ops)
    WHERE rdata_ip IS NOT NULL;
CREATE INDEX IF NOT EXISTS pdns_rdata ON dnstap.pdns (rdata) WHERE rdata_ip IS NULL;

-- Names as users type them: lowercase, trailing dot dropped (the root stays '.').
CREATE OR REPLACE FUNCTION dnstap.normalize_name(name text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN name = '.' THEN name ELSE regexp_replace(lower(name), '\.$', '') END
$$;

-- Records by owner name: 'www.example.com' exactly, or '*.example.com' for every name
-- strictly below example.com. The suffix form is a range on the reversed name with the
-- byte-wise text_pattern_ops operators rather than LIKE: '_' and '%' in names need no
-- escaping and the index is used even with a generic plan. Time window: records whose
-- [time_first, time_last] overlaps [time_from, time_to]; NULL means unbounded.
CREATE OR REPLACE FUNCTION dnstap.pdns_name(pattern text,
                                            time_from timestamptz DEFAULT NULL,
                                            time_to timestamptz DEFAULT NULL)
RETURNS SETOF dnstap.pdns
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    n text := dnstap.normalize_name(pattern);
    lo text;
    hi text;
BEGIN
    IF n LIKE '*.%' THEN
        lo := reverse(substr(n, 2));                  -- '.example.com' -> 'moc.elpmaxe.'
        hi := left(lo, -1) || '/';                    -- '/' is the byte after '.'
        RETURN QUERY
            SELECT * FROM dnstap.pdns p
            WHERE p.rrname_rev ~>=~ lo AND p.rrname_rev ~<~ hi
              AND (time_from IS NULL OR p.time_last >= time_from)
              AND (time_to IS NULL OR p.time_first <= time_to);
    ELSE
        RETURN QUERY
            SELECT * FROM dnstap.pdns p
            WHERE p.rrname = n
              AND (time_from IS NULL OR p.time_last >= time_from)
              AND (time_to IS NULL OR p.time_first <= time_to);
    END IF;
END
$$;

-- Records by data: an address ('192.0.2.1', '2001:db8::1') or a network ('192.0.2.0/24')
-- matches A/AAAA records inside it; anything else is a name matched against the rdata of
-- CNAME, NS, PTR, ... records.
CREATE OR REPLACE FUNCTION dnstap.pdns_rdata(value text,
                                             time_from timestamptz DEFAULT NULL,
                                             time_to timestamptz DEFAULT NULL)
RETURNS SETOF dnstap.pdns
LANGUAGE plpgsql STABLE AS $$
DECLARE
    ip inet;
BEGIN
    IF value ~ '^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$' THEN
        BEGIN
            ip := value::inet;
        EXCEPTION WHEN invalid_text_representation THEN
            ip := NULL;  -- e.g. 'cafe.be' looks hex-ish but is a name
        END;
    END IF;
    IF ip IS NOT NULL THEN
        RETURN QUERY
            SELECT * FROM dnstap.pdns p
            WHERE p.rdata_ip IS NOT NULL AND p.rdata_ip <<= ip
              AND (time_from IS NULL OR p.time_last >= time_from)
              AND (time_to IS NULL OR p.time_first <= time_to);
    ELSE
        RETURN QUERY
            SELECT * FROM dnstap.pdns p
            WHERE p.rdata = dnstap.normalize_name(value) AND p.rdata_ip IS NULL
              AND (time_from IS NULL OR p.time_last >= time_from)
              AND (time_to IS NULL OR p.time_first <= time_to);
    END IF;
END
$$;
