"""Video for the search indexer, which cracks no video: keyframes decoded from the videos in one Blob container
and written as JPEG, with metadata the indexer maps to fields, into another (`python -m shared keyframes`).

The decoder (PyAV, FFmpeg in its wheels) is an optional dependency (requirements-video.txt): nothing on the
skill's HTTP path imports this package.
"""
