"""Models: the VOneBlock front end, the teacher, and the compact student."""
