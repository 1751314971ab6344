"""What every other package relies on and nothing of ours: the error hierarchy, the app's settings read once
from the environment, and the limits sized from the instance's memory."""
