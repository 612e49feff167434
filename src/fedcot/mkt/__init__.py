"""FedMKT: mutual knowledge transfer between a server LLM and client SLMs."""
