"""Models and how a batch of images goes through one: decoding with limits and the process-wide decode budget,
the model interface (`model.Model`) that classification and detection implement, the factory that picks one
by task, and the task-neutral batch scheduler (pool, runs, deadline, per-image errors)."""
