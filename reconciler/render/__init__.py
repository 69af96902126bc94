"""Plans and status reports as text, JSON and Markdown; rollout progress for a terminal. Pure strings."""
