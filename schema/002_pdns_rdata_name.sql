-- dnstap-collector schema, version 2: dnstap.pdns.rdata_name, the name a record's data points
-- at, so that pdns_rdata('mail.example.com') finds MX (and SRV, NAPTR, ...) records too.

-- Lowercase presentation, no trailing dot, like rrname; NULL when the type has no target name
-- or the target is the root. Filled by the collector for CNAME, NS, PTR, DNAME (the whole
-- rdata), MX, KX, RT (the exchange), AFSDB (the host), SRV (the target), NAPTR (the
-- replacement) and SVCB/HTTPS (the TargetName).
ALTER TABLE dnstap.pdns ADD COLUMN IF NOT EXISTS rdata_name text;

-- Existing rows, where SQL can derive it: lone-name types (stored normalized already), and the
-- fixed-position fields of MX, KX, RT, AFSDB and SRV. NAPTR and SVCB/HTTPS rows get it when
-- they are next seen.
UPDATE dnstap.pdns SET rdata_name = nullif(nullif(dnstap.normalize_name(CASE
        WHEN rrtype IN ('CNAME', 'NS', 'PTR', 'DNAME') THEN rdata
        WHEN rrtype IN ('MX', 'KX', 'RT', 'AFSDB') THEN split_part(rdata, ' ', 2)
        WHEN rrtype = 'SRV' THEN split_part(rdata, ' ', 4)
    END), ''), '.')
WHERE rrtype IN ('CNAME', 'NS', 'PTR', 'DNAME', 'MX', 'KX', 'RT', 'AFSDB', 'SRV')
  AND rdata_name IS NULL
  AND left(rdata, 2) <> '\#';  -- generic form of a record the collector could not parse

CREATE INDEX IF NOT EXISTS pdns_rdata_name ON dnstap.pdns (rdata_name) WHERE rdata_name IS NOT NULL;
-- pdns_rdata no longer looks names up in rdata; the index on it only slowed every upsert.
DROP INDEX IF EXISTS dnstap.pdns_rdata;

-- Records by data: an address ('192.0.2.1', '2001:db8::1') or a network ('192.0.2.0/24')
-- matches A/AAAA records inside it; anything else is a name matched against rdata_name (the
-- target of CNAME, NS, PTR, DNAME, MX, SRV, NAPTR, SVCB, HTTPS, KX, AFSDB, RT records).
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
            WHERE p.rdata_name = dnstap.normalize_name(value)
              AND (time_from IS NULL OR p.time_last >= time_from)
              AND (time_to IS NULL OR p.time_first <= time_to);
    END IF;
END
$$;
