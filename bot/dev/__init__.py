"""The development kit: a throwaway Synapse, the bot as a child process and one Matrix client,
shared by the demo, the terminal chat, the integration tests and the benchmarks."""
