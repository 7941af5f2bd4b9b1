"""The local stack (emulators), the publisher, the synthetic stream and the demo."""
