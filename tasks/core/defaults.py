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
WEB_SECRET_KEY = KEY_PREFIX + "web:secret_key"        # string: session-signing key of every web host
SENT_JOBS_KEY = KEY_PREFIX + "sent"                    # sorted set: job id -> when its message went out
# The Qiskit Serverless drop-in (tasks.jobs.tokens, app.serverless_api)
JOB_TOKEN_KEY = KEY_PREFIX + "jobtoken:{token_hash}"   # string with TTL: "<job id>" while it runs
JOB_TOKEN_OF_KEY = KEY_PREFIX + "job:{job_id}:token"     # string: the token hash of a running job
JOB_PEER_EVENTS_KEY = KEY_PREFIX + "job:{job_id}:peer_events"  # list of JSON send_error events
JOB_RUNTIME_JOBS_KEY = KEY_PREFIX + "job:{job_id}:runtime_jobs"  # list of JSON runtime job ids

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
MAX_JSON_DEPTH = 100                        # nesting of any JSON a request sends (body or field)
MAX_REQUEST_LINE_BYTES = 4094               # longer request lines answer 414
MAX_HEADER_FIELD_BYTES = 8190               # a longer header field answers 431
# gunicorn's own limits sit above ours, so that the app answers (problem+json) in between;
# gunicorn answers beyond them itself (8190 is the most it allows for the request line).
GUNICORN_LIMIT_REQUEST_LINE = 8190
GUNICORN_LIMIT_FIELD_SIZE = 128 * 1024
# Every tar from a user (program, input channel) is refused while it is read once its
# members declare more than this in total, or hold more members than this (both settings).
TAR_MAX_UNPACKED_BYTES = 1024**3
TAR_MAX_MEMBERS = 20_000

# --- Time-outs and intervals ------------------------------------------------------------
# While Redis is away (restarting), the API answers 503 with this Retry-After; the web's
# Redis calls retry for about WEB_REDIS_RETRY_S first, workers' for WORKER_REDIS_RETRY_S (a
# worker that waits out a Redis restart keeps its running jobs).
REDIS_RETRY_AFTER_S = 2
WEB_REDIS_RETRY_S = 1.0
WORKER_REDIS_RETRY_S = 60.0
REDIS_RESTART_WAIT_S = 20.0                 # `qhybrid up` waits this long for a restarted Redis
HEARTBEAT_INTERVAL_S = 1.0                  # a supervisor refreshes its job's heartbeat this often
HEARTBEAT_TTL_S = 10                        # a job whose heartbeat is older than this lost its worker
REAPER_INTERVAL_S = 2.0                     # how often a worker looks for jobs that lost theirs
# Celery's Redis transport pops a message before it records it as unacked: a worker that dies
# in between takes the message with it. A job still QUEUED this long after its message went
# out, with its queue empty, its message not unacked and a worker on the queue, is sent again.
LOST_MESSAGE_AFTER_S = 10.0
SUPERVISOR_TICK_S = 0.05                    # log tailing, cancel and run-time checks
LOG_EXPIRY_S = 7 * 24 * 3600                # live log kept in Redis after the job ends (storage keeps it)
# Celery's Redis transport redelivers an unacked message after visibility_timeout. It must
# exceed the longest job, or a running job would be delivered to a second worker; lost
# workers are detected by the heartbeat instead, long before this.
VISIBILITY_TIMEOUT_S = SERVER_MAX_RUNTIME_S + 3600
MAX_LIVE_LOG_BYTES = 16 * 1024**2           # live log in Redis; storage keeps the whole log
WORKER_KEY = KEY_PREFIX + "worker:{name}"              # JSON presence of a worker: its queues; TTL
WORKERS_KEY = KEY_PREFIX + "workers"                  # zset: live worker names -> presence expiry
WARMING_KEY = KEY_PREFIX + "warming"                  # hash: queue -> until when a worker is starting
WARMING_TTL_S = 120                                   # a starting worker is awaited this long at most
WORKER_TTL_S = 10

# --- HTML pages -------------------------------------------------------------------------
PAGE_JOBS_LISTED = 50                       # newest jobs listed under the submission form
PAGE_LOG_CHARS = 1024**2                    # a job page shows at most this much of the log's end
PAGE_RESULT_CHARS = 256 * 1024              # longer results are linked, not shown
PAGE_POLL_WAIT_S = 10.0                     # a job page's refresh request waits this long for news

# --- Data files (the per-user flat file store) ------------------------------------------
FILES_MAX_BYTES = 10 * 1024**3              # quota: a user's files (own + programs') total bytes
FILES_MAX_COUNT = 1000                      # quota: a user's number of files
FILE_SNIFF_BYTES = 64 * 1024                # first bytes read to recognise a tar or HDF5 file
FILE_URL_EXPIRY_S = 300                     # presigned download URLs (S3) are valid this long
FILES_LOCK_KEY = KEY_PREFIX + "files:lock:{user}"   # string with TTL: one upload of a user at a time
FILES_LOCK_TTL_S = 60                       # refreshed while bytes flow; frees a crashed upload's lock
FILES_LOCK_WAIT_S = 60.0                    # an upload waits this long for the user's previous one

# --- Devices and quantum tasks ----------------------------------------------------------
QTASK_KEY = KEY_PREFIX + "qtask:{task_id}"                 # hash: the quantum-task record
QTASK_CIRCUITS_KEY = KEY_PREFIX + "qtask:{task_id}:circuits"  # string: QPY payload until it ran
QTASK_RESULT_KEY = KEY_PREFIX + "qtask:{task_id}:result"   # string: result JSON when small
QTASK_ENDED_KEY = KEY_PREFIX + "qtask:{task_id}:ended"      # list: its end status, for waiters; TTL
QTASK_ENDED_TTL_S = 3600                    # the ended list's life: waiters check the record first
USER_QTASKS_KEY = KEY_PREFIX + "qtasks:{user}"             # sorted set: task id -> created
JOB_QTASKS_KEY = KEY_PREFIX + "job:{job_id}:qtasks"        # sorted set: the job's task ids -> created
RUNNING_QTASKS_KEY = KEY_PREFIX + "qtasks:running"         # set of task ids a device worker runs
DEVICE_QUEUED_KEY = KEY_PREFIX + "device:{device}:queued:{priority}"  # sorted set: queued task ids
DEVICE_RUNS_KEY = KEY_PREFIX + "device:{device}:runs"      # list: task ids in the order they started
DEVICE_WAKE_KEY = KEY_PREFIX + "device:{device}:wake"      # list: a token per queued task; idle runners block on it
RUNNER_TAKEN_KEY = KEY_PREFIX + "device-runner:{runner}:taken"  # string: the task a device runner took last
DEVICE_WORKER_STOP_KEY = KEY_PREFIX + "device-worker:{worker}:stop"  # list: its canceled running tasks
DEVICE_HOLDER_KEY = KEY_PREFIX + "device:{device}:holder"  # string: id of the job holding the device
DEVICE_WAITING_KEY = KEY_PREFIX + "device:{device}:waiting"  # sorted set: job id -> arrival number
DEVICE_ARRIVALS_KEY = KEY_PREFIX + "device:arrivals"       # counter: first come, first served
# Device reservations: a user's window of exclusive use of a device (tasks.devices.reservations).
RESERVATION_KEY = KEY_PREFIX + "reservation:{res_id}"       # hash: the reservation
DEVICE_RESERVATIONS_KEY = KEY_PREFIX + "device:{device}:reservations"  # zset: id -> start
USER_RESERVATIONS_KEY = KEY_PREFIX + "reservations:{user}"  # sorted set: id -> start
ALL_RESERVATIONS_KEY = KEY_PREFIX + "reservations"          # sorted set: id -> start (admins)
MAX_RESERVATION_S = 7 * 24 * 3600        # the longest window one reservation may hold
MAX_RESERVATION_AHEAD_S = 365 * 24 * 3600   # how far ahead a window may start
QTASK_STATUSES = (QUEUED, RUNNING, DONE, ERROR, CANCELED)
MAX_QTASK_CIRCUITS_BYTES = 64 * 1024**2     # one quantum task's QPY payload (base64 text)
QTASK_INLINE_BYTES = 512 * 1024             # payloads and results up to this stay in Redis, else storage
DEVICE_RUNS_KEPT = 1000                     # run order kept per device (for status and tests)
DEVICE_WAIT_S = 1.0                         # an idle device runner looks at every queue this often
DEVICE_STOP_TTL_S = 60                      # a stop list outlives a device worker that never read it
DEVICE_DISPATCH_GRACE_S = 10.0              # a granted job not yet sent after this is sent again
CHANNEL_RESULT_WAIT_S = 1.0                 # one channel call waits this long for a task's result

# --- Hybrid jobs (@hybrid_job) ----------------------------------------------------------
JOB_METRICS_KEY = KEY_PREFIX + "job:{job_id}:metrics"  # list of JSON metric records, in order
MAX_METRICS_PER_JOB = 100_000               # further log_metric calls are dropped (noted in the log)
MAX_FUNCTION_BYTES = 50 * 1024**2           # a hybrid job's cloudpickled function and arguments
MAX_INPUT_DATA_BYTES = 5 * 1024**3          # local input channels of one job, unpacked
MAX_CHECKPOINT_BYTES = 64 * 1024**2         # one save_job_checkpoint
MAX_DEPENDENCIES = 100                      # requirement lines of one job
DEPENDENCY_INSTALL_TIMEOUT_S = 900          # pip install of a job's dependencies (when allowed)
PACKAGE_INDEX = "https://pypi.org/simple"   # where jobs' dependencies come from
DEPENDENCY_INSTALL_MEM_BYTES = 4 * 1024**3   # pip's sandbox (its /tmp included)

# --- Distributed tasks (distribute_task, put, map_reduce) -------------------------------
TASK_KEY = KEY_PREFIX + "task:{task_id}"                   # hash: the task record
TASK_PAYLOAD_KEY = KEY_PREFIX + "task:{task_id}:payload"   # bytes: pickled (args, kwargs), until it ran
TASK_RESULT_KEY = KEY_PREFIX + "task:{task_id}:result"     # bytes: pickled return value when small
TASK_LOG_KEY = KEY_PREFIX + "task:{task_id}:log"           # string: the task's output, capped
JOB_TASK_OUTPUT_KEY = KEY_PREFIX + "job:{job_id}:{attempt}:task-output"  # its tasks' output, for its log
TASK_HEARTBEAT_KEY = KEY_PREFIX + "task:{task_id}:heartbeat"  # string with TTL while it runs
TASK_INBOX_KEY = KEY_PREFIX + "inbox:{owner}"              # list: "<task id> <status>" as they end
JOB_TASKS_KEY = KEY_PREFIX + "job:{job_id}:tasks"          # sorted set: task id -> submission order
JOB_TASK_SEQ_KEY = KEY_PREFIX + "job:{job_id}:taskseq"     # counter behind that order
JOB_QUEUED_TASKS_KEY = KEY_PREFIX + "job:{job_id}:queued"  # hash: resource class -> tasks queued
JOB_READY_TASKS_KEY = KEY_PREFIX + "job:{job_id}:ready:{cls}"  # list: task keys for any worker to claim
JOB_FUNCTION_KEY = KEY_PREFIX + "job:{job_id}:fn:{digest}"  # bytes: a pickled task function
JOB_OBJECT_KEY = KEY_PREFIX + "job:{job_id}:obj:{ref}"     # bytes: an object put() when small
JOB_BLOBS_KEY = KEY_PREFIX + "job:{job_id}:blobs"          # set: the two kinds above, to delete
JOB_USAGE_KEY = KEY_PREFIX + "job:{job_id}:usage"          # hash: "<stage>|CPU_TIME" -> seconds
TASK_STATUSES = (QUEUED, RUNNING, DONE, ERROR, CANCELED)
TASK_INLINE_BYTES = 512 * 1024              # payloads, results and put() objects up to this stay in Redis
TASK_CHANNEL_INLINE_BYTES = 256 * 1024      # bigger values cross the local channel as spool files
MAX_TASK_BLOB_BYTES = 2 * 1024**3           # one task's arguments, result or put() object
MAX_TASKS_PER_JOB = 1_000_000
TASK_BATCH_S = 0.005                        # user code: calls this close together go as one group
TASK_BATCH_MAX = 1000                       # ... up to this many per group
TASK_MESSAGE_IDS = 128                      # task ids one Celery message carries at most
TASK_MESSAGES_MIN = 8                       # ... but a batch goes as this many messages (if it has as
                                            # many tasks), so that as many idle worker slots wake
TASK_CLAIM_MAX = 64                         # a worker claims at most this many tasks ahead at once
TASK_CLAIM_AHEAD_S = 0.02                   # ... and as many as it expects to run in this time
TASK_DRAIN_S = 2.0                          # one message takes its job's ready tasks this long at most
TASK_FINISH_BATCH_S = 0.01                  # ends of tasks are recorded together within this time
TASK_COLLECT_WAIT_S = 0.5                   # one channel call waits this long for results
TASK_RECONCILE_S = 1.0                      # a waiting supervisor re-reads task records this often
TASK_TICK_S = 0.1                           # a task supervisor checks for cancel this often
TASK_HEARTBEAT_TTL_S = 10                   # a running task whose heartbeat is older lost its worker
MAX_TASK_ATTEMPTS = 2                       # a task whose worker died is sent again once
TASK_END_WAIT_S = 10.0                      # a job that ends waits this long for its tasks to stop
TASK_EXPIRY_S = 7 * 24 * 3600               # task records after their job ended (listing)
TASK_RESULT_EXPIRY_S = 24 * 3600            # results, payloads and put() objects after the job ended
TASK_LOG_MAX_BYTES = 64 * 1024              # output kept per task (its beginning)
JOB_TASK_OUTPUT_MAX_BYTES = 16 * 1024**2    # all tasks' output that joins one job's log
TASK_ERROR_LINES = 40                       # remote traceback lines kept per failed task
EXECUTOR_IDLE_S = 30.0                      # a job's idle task executor process is stopped after this
EXECUTOR_START_TIMEOUT_S = 60.0
SANDBOX_START_TIMEOUT_S = 30.0     # bubblewrap makes a sandbox in milliseconds; a hung one fails
# A refused upload's remaining body is read and dropped (up to this much, for this long) so
# that the client, still sending, gets the error instead of a reset connection.
FILES_DRAIN_MAX_BYTES = 256 * 1024**2
FILES_DRAIN_MAX_S = 30.0

# The job sandbox (tasks.sandbox.box): limits beside the resource class's memory and CPU.
JOB_MAX_PIDS = 1024                         # processes and threads of one job or task executor
JOB_DISK_BYTES = 10 * 1024**3               # what a job may write in its directory
JOB_DATA_MOUNT = "/data"                    # where a sandboxed job also sees its data directory
JOB_DISK_CHECK_S = 1.0                      # how often the job directory's size is checked
