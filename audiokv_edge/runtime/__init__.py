"""Running a model: the llama.cpp model/context/projector wrapper, Session, audio loading, statistics.
Imports keep_plan and everything below it."""
