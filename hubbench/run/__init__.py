"""The parent side of a run: cells in, rows out, whichever executor measures them.

runner (prepare_run: the run file and each cell's state, new or resumed; run_plan), rounds (the
rounds loop every executor runs: passes interleaved across cells in one isolated worker, and the
signals that stop it), worker (the handle on that worker process), rows (a cell's state and its
row, both ways), eta (the time left), and for submitit jobs: executors (the submitter: submit,
poll, merge, notice the end), jobs (cells sharded into jobs, the job's body, the submitit
executor), parts (the part files jobs write), lost (lost jobs), nodes (the mailbox of a
multi-node job).

Imports point one way: runner -> executors -> jobs -> rounds -> rows; nothing here imports the
runner. Nothing is re-exported here, so that a submitit job, which imports hubbench.run.jobs,
loads only what it runs.
"""
