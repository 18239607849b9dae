"""Running the whole stack: the embedded broker, topic creation, and the service supervisor."""
