"""RefreshModel: find the labeling experiment's best AutoML run in Azure ML (`aml`), judge it against the
current version and publish it (`policy`), converting AutoML's model.pt to ONNX when a run has no usable
model.onnx (`checkpoint`, torch imported lazily). Never imported on the HTTP path."""
