"""The kinds of request a chat user makes, used to steer a model that writes its own training prompts.

A small instruct model asked for "a user message" writes short, generic questions; real users ask for letters,
role-play, proofs, code, extraction from a text they paste, and follow up on the answer. Each kind below gives
openers (the first words of the user's message, with ``{topic}``, ``{code_task}``, ``{lang}``, ``{n}`` slots);
the model writes the rest of the message. *Passage* kinds paste an earlier answer of the model (an article,
a story, a function) under an instruction, which gives long-context prompts whose answers copy and transform
text the request already holds. Every text here is ours: no benchmark question, category text or template.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

TOPICS = (
    "a rainy day in a small town", "training a new puppy", "growing tomatoes on a balcony", "saving money on groceries",
    "a first job interview", "learning to play the guitar", "a trip to the mountains", "the history of coffee",
    "electric cars", "solar panels", "the water cycle", "black holes", "honeybees", "the Roman Empire",
    "the printing press", "the industrial revolution", "a lost wallet", "moving to a new city", "remote work",
    "time management", "a small bakery", "a neighbourhood garden", "recycling plastic", "ocean tides", "volcanoes",
    "dinosaurs", "the human heart", "sleep and memory", "running a marathon", "healthy breakfasts", "meditation",
    "a chess tournament", "a school science fair", "climate change", "rainforests", "desert animals", "migrating birds",
    "the invention of the telephone", "early aviation", "a train journey across Europe", "street food", "tea ceremonies",
    "a birthday party", "a wedding speech", "a job promotion", "a customer complaint", "a noisy neighbour",
    "a book club", "a museum visit", "renaissance painting", "jazz music", "learning a second language",
    "public libraries", "a startup pitch", "online privacy", "password security", "cloud storage", "video games",
    "board games", "a robot that learns to cook", "a lighthouse keeper", "a detective in Paris", "a space colony on Mars",
    "a friendly dragon", "a haunted house", "a time traveller", "photosynthesis", "vaccines", "the stock market",
    "inflation", "a family budget", "buying a used car", "renting an apartment", "a city bike-sharing scheme",
    "public transport", "the Olympic Games", "a football match", "a mountain rescue", "ancient Egypt", "the Silk Road",
    "Shakespeare's plays", "poetry for children", "a farmers' market", "composting", "a camping trip", "first aid",
    "bird watching", "smartphone addiction", "social media and teenagers", "an online course", "a science podcast",
    "a charity fundraiser", "volunteering at an animal shelter", "a local election", "the scientific method",
    "probability and dice", "prime numbers", "the speed of light", "earthquakes", "the moon landing", "coral reefs",
)

CODE_TASKS = (
    "reverses the words in a sentence", "checks whether a number is prime", "merges two sorted lists",
    "counts how often each word appears in a text", "converts Celsius to Fahrenheit", "flattens a nested list",
    "removes duplicates from a list while keeping the order", "returns the n-th Fibonacci number",
    "checks whether a string is a palindrome", "finds the largest number in a list", "computes the average of a list",
    "reads a text file and counts its lines", "validates a simple email address", "groups people by age",
    "sorts a list of dictionaries by a key", "computes a factorial recursively", "finds the most common character",
    "turns a list of pairs into a dictionary", "checks whether two words are anagrams", "sums the digits of a number",
    "implements a simple stack class", "implements a queue with two stacks", "does a binary search in a sorted list",
    "converts a Roman numeral to an integer", "counts the vowels in a string", "rotates a list by k positions",
    "finds the second smallest number", "capitalises the first letter of every word", "parses a date string",
    "computes compound interest", "generates a random password", "splits a list into chunks of size n",
    "computes the greatest common divisor", "checks whether brackets are balanced", "transposes a matrix",
    "finds all even numbers in a list", "converts a number to binary", "merges two dictionaries",
    "calculates the area of a circle", "simulates rolling two dice", "keeps a running total of expenses",
    "finds the longest word in a sentence", "checks whether a year is a leap year", "removes punctuation from text",
)

LANGUAGES = ("Python",) * 5 + ("JavaScript", "Java", "C", "SQL", "Bash", "Go", "Rust", "C++", "TypeScript")


@dataclass(frozen=True)
class Kind:
    """One kind of request: ``openers`` start the user's message; the model writes the rest."""

    name: str
    openers: tuple[str, ...]
    passage_from: tuple[str, ...] = ()  # passage kinds: paste an answer of one of these kinds under the opener
    short: bool = False  # one-line requests: the user's message is cut short (fewer tokens for the model to add)


KINDS: tuple[Kind, ...] = (
    Kind("story", ("Write a short story about {topic}", "Tell me a story about {topic}",
                   "Can you write a bedtime story about {topic}", "Write a fable about {topic}")),
    Kind("poem", ("Write a poem about {topic}", "Write a haiku about {topic}", "Compose a limerick about {topic}",
                  "Write a song about {topic}")),
    Kind("essay", ("Write an essay about {topic}", "Write a blog post about {topic}",
                   "Write a news article about {topic}", "Write a short report on {topic}")),
    Kind("letter", ("Write a formal letter to", "Write an email to my manager about", "Draft a cover letter for",
                    "Write a thank-you note to", "Write a letter of complaint about {topic}",
                    "Help me write an email to")),
    Kind("roleplay", ("Pretend you are a tour guide and", "Act as a job interviewer and", "You are a pirate captain.",
                      "Imagine you are a doctor talking to a patient about", "Play the role of a chef and",
                      "Pretend to be a medieval knight and", "Act as my personal trainer and")),
    Kind("reasoning", ("Here is a logic puzzle:", "If all", "Which is heavier,", "Solve this riddle:",
                       "Three friends", "Is the following argument valid?"), short=True),
    Kind("math", ("A store sells {item} for ${n} each. If", "A train leaves the station at",
                  "Solve for x:", "What is {n} percent of", "A rectangle has a length of {n} cm and",
                  "Prove that", "If I save ${n} every month,", "A recipe needs {n} cups of flour for"), short=True),
    Kind("code_write", ("Write a {lang} function that {code_task}", "How do I write a {lang} program that {code_task}",
                        "Can you show me {lang} code that {code_task}", "Write a {lang} script that {code_task}")),
    Kind("code_explain", ("Explain what this code does:", "Can you walk me through this code line by line?",
                          "What is the time complexity of this code?", "Add comments to this code:"),
         passage_from=("code_write",)),
    Kind("code_fix", ("This code does not work. Find the bug and fix it:", "Refactor this code to make it cleaner:",
                      "Rewrite this code in a different programming language:", "Write unit tests for this code:"),
         passage_from=("code_write",)),
    Kind("extraction", ("List every name, place and date mentioned in the text below.",
                        "Extract the key facts from this text as bullet points:",
                        "Turn the following text into a JSON object with the main entities:",
                        "Make a table of the important numbers in this text:"),
         passage_from=("essay", "story")),
    Kind("summary", ("Summarize the following text in three sentences:", "Give me a one-paragraph summary of this:",
                     "What is the main idea of this text?", "Write a headline and a short summary for this:"),
         passage_from=("essay", "story", "letter")),
    Kind("rewrite", ("Rewrite the following text in a more formal tone:", "Make this text shorter and simpler:",
                     "Rewrite this for a ten-year-old:", "Fix the grammar and improve the style of this text:"),
         passage_from=("essay", "letter", "story")),
    Kind("qa_passage", ("Read the text below and answer: what is it mostly about, and why does it matter?",
                        "Based on this text, write three quiz questions with answers:",
                        "What is the tone of this text? Explain with examples:"),
         passage_from=("essay", "story")),
    Kind("science", ("Explain how {topic} works", "Why does", "What causes", "Explain to a student how",
                     "What is the science behind {topic}?")),
    Kind("humanities", ("What were the causes and effects of", "Describe the history of {topic}",
                        "What did philosophers say about", "How did {topic} change society?")),
    Kind("advice", ("I'm feeling stressed about", "How can I get better at", "What should I do if",
                    "I have a problem with {topic}.", "Any tips for")),
    Kind("compare", ("What is the difference between", "Compare {topic} and", "What are the pros and cons of",
                     "Which is better for a beginner:")),
    Kind("brainstorm", ("Give me {n} ideas for", "List {n} ways to", "Suggest some names for",
                        "Brainstorm topics for a presentation on {topic}")),
    Kind("planning", ("Plan a three-day trip to", "Make a weekly study schedule for", "Create a workout plan for",
                      "Help me plan a party for", "Make a shopping list for")),
    Kind("howto", ("How do I", "Give me step-by-step instructions to", "What is the best way to",
                   "Walk me through how to")),
    Kind("factual", ("Who was", "What is", "When did", "Where is", "How many"), short=True),
    Kind("definition", ("What does the word", "Define", "Explain the term", "What is meant by"), short=True),
    Kind("language", ("Translate this sentence into French:", "How do you say", "Correct this sentence:",
                      "What is a synonym for"), short=True),
    Kind("business", ("Write a product description for", "Create a marketing plan for", "Write a job advert for",
                      "Write a short speech for", "Draft a meeting agenda about {topic}")),
    Kind("opinion", ("What do you think about", "Is it a good idea to", "Should schools", "Do you agree that")),
)
KIND_BY_NAME = {k.name: k for k in KINDS}
ITEMS = ("apples", "notebooks", "tickets", "pencils", "cupcakes", "plants", "T-shirts", "batteries", "candles")


def opener_text(kind: Kind, rng: random.Random) -> str:
    """One opener of ``kind`` with its slots filled (deterministic for a seeded ``rng``)."""
    text = rng.choice(kind.openers)
    return text.format(topic=rng.choice(TOPICS), code_task=rng.choice(CODE_TASKS), lang=rng.choice(LANGUAGES),
                       n=rng.choice((2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25, 40, 75, 120)), item=rng.choice(ITEMS))


FOLLOW_UP_OPENERS = (
    "Can you make it shorter", "Thanks! Now", "Can you explain", "What about", "Could you add", "Rewrite it",
    "Great. Can you give an example of", "Why", "Now write", "That's not quite right.", "Can you turn this into",
    "How would this change if", "Make it more", "Can you translate", "What if",
)
