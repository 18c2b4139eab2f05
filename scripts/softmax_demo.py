"""Print softmax([3.0, 2.0, 1.0]) by hand and with torch, and plot softmax over logits -5..5."""

from softcal.softmax_demo import main

if __name__ == "__main__":
    main()
