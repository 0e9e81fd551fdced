"""Every Redis key prefix, expiry, limit and time-out of the server, defined once."""

from __future__ import annotations

# --- Redis keys -------------------------------------------------------------------------
KEY_PREFIX = "qh:"
USER_KEY = KEY_PREFIX + "user:{user}"                  # hash: name, token_hash, created
USERS_KEY = KEY_PREFIX + "users"                       # set of user names
TOKEN_KEY = KEY_PREFIX + "token:{token_hash}"          # string: user name
PROGRAM_KEY = KEY_PREFIX + "program:{user}:{title}"    # hash: the program record
PROGRAMS_KEY = KEY_PREFIX + "programs:{user}"          # sorted set: title -> created
JOB_KEY = KEY_PREFIX + "job:{job_id}"                  # hash: the job record
JOB_EVENTS_KEY = KEY_PREFIX + "job:{job_id}:events"    # list of JSON events
JOB_LOG_KEY = KEY_PREFIX + "job:{job_id}:log"          # string: live log, appended
JOB_HEARTBEAT_KEY = KEY_PREFIX + "job:{job_id}:heartbeat"  # string with TTL while a supervisor runs it
JOB_CHANGED_CHANNEL = KEY_PREFIX + "job:{job_id}:changed"  # pub/sub: status changes, log appends
USER_JOBS_KEY = KEY_PREFIX + "jobs:{user}"             # sorted set: job id -> created
JOB_NAME_KEY = KEY_PREFIX + "jobname:{user}:{name}"    # string: job id of the newest job with that name
ACTIVE_JOBS_KEY = KEY_PREFIX + "active"                # set of job ids in INITIALIZING/RUNNING/CANCELING
REAPER_LOCK_KEY = KEY_PREFIX + "lock:reaper"

# --- Statuses ---------------------------------------------------------------------------
QUEUED = "QUEUED"
INITIALIZING = "INITIALIZING"
RUNNING = "RUNNING"
DONE = "DONE"
ERROR = "ERROR"
CANCELED = "CANCELED"
CANCELING = "CANCELING"
TERMINAL_STATUSES = frozenset({DONE, ERROR, CANCELED})
ACTIVE_STATUSES = frozenset({INITIALIZING, RUNNING, CANCELING})
ALL_STATUSES = (QUEUED, INITIALIZING, RUNNING, DONE, ERROR, CANCELED, CANCELING)

# --- Limits -----------------------------------------------------------------------------
MAX_PROGRAM_TAR_BYTES = 50 * 1024**2        # a program's working_dir, packed
MAX_ARGUMENTS_BYTES = 16 * 1024**2          # encoded arguments of one run
MAX_RESULT_BYTES = 64 * 1024**2             # what save_result may store
DEFAULT_MAX_RUNTIME_S = 24 * 3600           # a job's maximum run time unless it asks for less
SERVER_MAX_RUNTIME_S = 7 * 24 * 3600        # no job may ask for more
MAX_ATTEMPTS = 2                            # a job whose worker died is run again once
TITLE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
USER_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
ERROR_TRACEBACK_LINES = 15                  # kept in the job's error message
LONG_POLL_MAX_S = 60.0                      # the longest a single wait request blocks

# --- Time-outs and intervals ------------------------------------------------------------
HEARTBEAT_INTERVAL_S = 1.0                  # a supervisor refreshes its job's heartbeat this often
HEARTBEAT_TTL_S = 10                        # a job whose heartbeat is older than this lost its worker
REAPER_INTERVAL_S = 2.0                     # how often a worker looks for jobs that lost theirs
SUPERVISOR_TICK_S = 0.05                    # log tailing, cancel and run-time checks
LOG_EXPIRY_S = 7 * 24 * 3600                # live log kept in Redis after the job ends (storage keeps it)
# Celery's Redis transport redelivers an unacked message after visibility_timeout. It must
# exceed the longest job, or a running job would be delivered to a second worker; lost
# workers are detected by the heartbeat instead, long before this.
VISIBILITY_TIMEOUT_S = SERVER_MAX_RUNTIME_S + 3600
MAX_LIVE_LOG_BYTES = 16 * 1024**2           # live log in Redis; storage keeps the whole log
WORKER_KEY = KEY_PREFIX + "worker:{name}"              # JSON presence of a worker: its queues; TTL
WORKER_TTL_S = 10
