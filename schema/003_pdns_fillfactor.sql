-- dnstap-collector schema, version 3: more free room on the pages of dnstap.pdns.

-- Every transaction of the collector updates each record it saw (count, time_last) with one
-- INSERT ... ON CONFLICT. An update is HOT (no new index entries in the four indexes) only when
-- the new row version fits on the page of the old one. At fillfactor 70, a page whose records
-- were all seen again in one transaction ran out of room after about 40% of them; at 50 it
-- holds a second version of each of its rows (earlier versions are pruned when the page is
-- next read). Only pages written from now on are filled to 50%: no table rewrite.
ALTER TABLE dnstap.pdns SET (fillfactor = 50);
