// Schema migrations over an open connection (the sink reuses its own connection).
#pragma once

#include "sinks/pg.hpp"

namespace dnstap_collector {

// Applies the embedded schema/NNN_*.sql newer than the database's version, each in its own
// transaction, all under a session advisory lock so concurrent collectors take turns.
// Returns the number applied. Throws std::runtime_error when the database is newer.
int migrate(pg::Connection& conn);

// What the sink runs at every (re)connect: reads dnstap.schema_version first and, when the
// database is at this binary's latest version, runs no DDL at all (so a writer role needs no
// CREATE on the database); otherwise migrate(). Throws like migrate() when it is newer.
int migrate_if_needed(pg::Connection& conn);

}  // namespace dnstap_collector
