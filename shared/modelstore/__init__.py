"""The Blob model store and the model an instance serves: the pointer (`current.json`) and version names,
verified reads into the local cache, the SDK client that publishes and promotes, the model sources (a folder
or the store), the holder (load, smoke test, hot swap, background poll) and the cold start's prefetch.

Nothing here imports ONNX Runtime: the holder is handed a function that loads a model."""
